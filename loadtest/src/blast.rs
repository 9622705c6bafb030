//! `blast`: the practical limit of this machine. A pipelined SMTP client with no queue, no
//! DNS and no durability pushes the scenario's messages (the same recipients, rendered from
//! the same template straight into DATA form by the same writer) to the simulated providers
//! over the same number of connections the engine may open, on as many executors as the
//! engine has shards. Where the receiver offers CHUNKING and the engine would use it, blast
//! sends BDAT as the engine does: two transactions in flight, the second behind an RSET.

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde::Serialize;
use spate::smtp::data::DataWriter;
use spate::smtp::reply::{Reply, ReplyParser};
use spate::smtp::session::Capabilities;
use spate::template::Template;
use spate_sim::scenario::Scenario;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One destination: an address, how many connections, which recipients.
#[derive(Clone)]
pub struct Group {
    pub addr: SocketAddr,
    pub connections: u32,
    pub recipients: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BlastReport {
    pub messages: u64,
    pub delivered: u64,
    pub failed: u64,
    pub connections: u64,
    pub elapsed_s: f64,
    pub delivered_per_s: f64,
    /// One transaction: MAIL/RCPT/DATA pipelined, the body, the final reply.
    pub transaction_p50_us: u64,
    pub transaction_p99_us: u64,
    pub transaction_max_us: u64,
    /// CPU time of blast's own threads (not the simulated providers').
    pub cpu_s: f64,
    pub cpu_us_per_message: f64,
}

/// The scenario's valid recipients grouped the way the engine's scopes group them: one group
/// per provider with an MX host (its connection limit), one per long-tail domain (the site
/// limit). `port` is the sink's.
pub fn groups_for(scenario: &Scenario, port: u16) -> Vec<Group> {
    let campaign = scenario.campaign();
    let mut by_domain: Vec<Vec<u64>> = vec![Vec::new(); campaign.domains.len()];
    for i in (0..scenario.recipients).filter(|&i| !campaign.is_bad(i)) {
        by_domain[campaign.domain_of(i)].push(i);
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut provider_group: Vec<Option<usize>> = vec![None; scenario.providers.len()];
    for ((_, pi), rcpts) in campaign.domains.iter().zip(by_domain) {
        let p = &scenario.providers[*pi];
        let addr = SocketAddr::new(p.listen[0], port);
        if p.mx.is_some() {
            match provider_group[*pi] {
                Some(g) => groups[g].recipients.extend(rcpts),
                None => {
                    provider_group[*pi] = Some(groups.len());
                    groups.push(Group {
                        addr,
                        connections: p.connections,
                        recipients: rcpts,
                    });
                }
            }
        } else if !rcpts.is_empty() {
            groups.push(Group {
                addr,
                connections: scenario.site_connections,
                recipients: rcpts,
            });
        }
    }
    groups
}

struct Totals {
    delivered: u64,
    failed: u64,
    connections: u64,
    hist: Histogram<u64>,
}

/// Sends every group's recipients; `shards` executors share the work.
pub fn blast(
    scenario: &Scenario,
    groups: Vec<Group>,
    shards: usize,
) -> Result<BlastReport, String> {
    let template =
        Arc::new(Template::parse(scenario.campaign().template().into_bytes()).map_err(|e| e.0)?);
    let shards = shards.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let messages: u64 = groups.iter().map(|g| g.recipients.len() as u64).sum();
    let domains: Arc<Vec<String>> = Arc::new(
        scenario
            .campaign()
            .domains
            .iter()
            .map(|(d, _)| d.clone())
            .collect(),
    );
    let campaign = Arc::new(scenario.campaign());
    let chunking = scenario.engine_chunking();
    let started = Instant::now();
    let mut handles = Vec::new();
    for shard in 0..shards {
        // Each shard takes every shards-th recipient of each group and its share of the
        // group's connections (at least one).
        let mine: Vec<Group> = groups
            .iter()
            .map(|g| Group {
                addr: g.addr,
                connections: (g.connections / shards as u32
                    + u32::from((shard as u32) < g.connections % shards as u32))
                .max(1),
                recipients: g
                    .recipients
                    .iter()
                    .copied()
                    .skip(shard)
                    .step_by(shards)
                    .collect(),
            })
            .filter(|g| !g.recipients.is_empty())
            .collect();
        let (template, campaign, _domains) = (
            Arc::clone(&template),
            Arc::clone(&campaign),
            Arc::clone(&domains),
        );
        handles.push(
            LocalExecutorBuilder::new(Placement::Fixed(shard % cpus))
                .name(&format!("blast-{shard}"))
                .io_memory(1 << 20)
                .spawn(move || async move {
                    let totals = Rc::new(RefCell::new(Totals {
                        delivered: 0,
                        failed: 0,
                        connections: 0,
                        hist: Histogram::new(3).expect("histogram"),
                    }));
                    let mut tasks = Vec::new();
                    for g in mine {
                        let queue = Rc::new(RefCell::new(VecDeque::from(g.recipients)));
                        for _ in 0..g.connections {
                            tasks.push(glommio::spawn_local(connection(
                                g.addr,
                                Rc::clone(&queue),
                                Arc::clone(&template),
                                Arc::clone(&campaign),
                                Rc::clone(&totals),
                                chunking,
                            )));
                        }
                    }
                    for t in tasks {
                        t.await;
                    }
                    let t = totals.borrow();
                    // This executor thread's own CPU (the sink runs on another thread).
                    let cpu = spate_sim::run::proc_cpu_s("thread-self");
                    (t.delivered, t.failed, t.connections, t.hist.clone(), cpu)
                })
                .map_err(|e| format!("blast executor: {e}"))?,
        );
    }
    let mut report = BlastReport {
        messages,
        ..Default::default()
    };
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for h in handles {
        let (d, f, c, hh, cpu) = h.join().map_err(|e| format!("blast executor: {e}"))?;
        report.cpu_s += cpu;
        report.delivered += d;
        report.failed += f;
        report.connections += c;
        let _ = hist.add(hh);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.delivered_per_s = report.delivered as f64 / report.elapsed_s.max(1e-9);
    report.cpu_us_per_message = report.cpu_s * 1e6 / report.delivered.max(1) as f64;
    report.transaction_p50_us = hist.value_at_quantile(0.5);
    report.transaction_p99_us = hist.value_at_quantile(0.99);
    report.transaction_max_us = hist.max();
    Ok(report)
}

/// Reads SMTP replies from a stream with the engine's own reply parser.
struct Replies {
    parser: ReplyParser,
    buf: Vec<u8>,
}

impl Replies {
    /// The code of the next complete reply (multi-line replies are read whole).
    async fn next(&mut self, s: &mut TcpStream) -> std::io::Result<u16> {
        Ok(self.next_reply(s).await?.code)
    }

    async fn next_reply(&mut self, s: &mut TcpStream) -> std::io::Result<Reply> {
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.0)),
            }
            let n = s.read(&mut self.buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.parser.push(&self.buf[..n]);
        }
    }
}

/// How a connection's BDAT transactions ended.
enum Flow {
    /// Nothing left to send: QUIT was sent.
    Quit,
    /// The connection failed or the server closed it; `progressed` if anything was
    /// delivered on it. What was in flight is back in the queue.
    Reconnect { progressed: bool },
}

/// What a connection's BDAT transactions share with the rest of its executor.
struct Bdat<'a> {
    queue: &'a RefCell<VecDeque<u64>>,
    template: &'a Template,
    order: &'a [Option<usize>],
    campaign: &'a spate_sim::campaign::Campaign,
    totals: &'a RefCell<Totals>,
}

impl Bdat<'_> {
    /// Sends transactions as the engine's session does with BDAT: each message rendered into
    /// DATA form and unstuffed into one `BDAT n LAST` chunk right behind its MAIL and RCPT,
    /// two transactions in flight, the second behind an RSET.
    async fn transactions(
        &self,
        s: &mut TcpStream,
        r: &mut Replies,
        body: &mut Vec<u8>,
        rendered: &mut Vec<u8>,
    ) -> Flow {
        let mut window: VecDeque<(u64, Instant, bool)> = VecDeque::new();
        let mut out = Vec::with_capacity(body.capacity() + 512);
        let mut progressed = false;
        loop {
            while window.len() < 2 {
                let Some(i) = self.queue.borrow_mut().pop_front() else {
                    break;
                };
                let behind = !window.is_empty();
                if behind {
                    out.extend_from_slice(b"RSET\r\n");
                }
                let to = self.campaign.address(i);
                let (name, code) = spate_sim::campaign::Campaign::vars(i);
                let ours = [to.as_bytes(), name.as_bytes(), code.as_bytes()];
                let values: Vec<&[u8]> = self
                    .order
                    .iter()
                    .map(|&k| k.map_or(b"" as &[u8], |k| ours[k]))
                    .collect();
                body.clear();
                let mut w = DataWriter::new();
                self.template.render_data(&values, &mut w, body, rendered);
                let chunk = w.finish_data(std::mem::take(body)).into_chunk();
                out.extend_from_slice(b"MAIL FROM:<bounces@acme.example>\r\nRCPT TO:<");
                out.extend_from_slice(to.as_bytes());
                out.extend_from_slice(format!(">\r\nBDAT {} LAST\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(&chunk);
                *body = chunk;
                window.push_back((i, Instant::now(), behind));
            }
            let Some(&(_, t0, behind)) = window.front() else {
                let _ = s.write_all(b"QUIT\r\n").await;
                let _ = r.next(s).await;
                return Flow::Quit;
            };
            let replies = async {
                if !out.is_empty() {
                    s.write_all(&out).await?;
                    out.clear();
                }
                if behind && r.next(s).await? != 250 {
                    return Ok(None);
                }
                let (_mail, _rcpt, last) = (r.next(s).await?, r.next(s).await?, r.next(s).await?);
                Ok::<_, std::io::Error>(Some(last))
            }
            .await;
            let mut t = self.totals.borrow_mut();
            let _ = t.hist.record(t0.elapsed().as_micros() as u64);
            match replies {
                Ok(Some(code)) if code / 100 == 2 => {
                    t.delivered += 1;
                    progressed = true;
                }
                Ok(Some(code)) if code != 421 => t.failed += 1,
                // Closing, an RSET refused, or the connection gone: what was in flight is
                // sent again on a new one.
                _ => {
                    let mut q = self.queue.borrow_mut();
                    for &(j, _, _) in window.iter().rev() {
                        q.push_front(j);
                    }
                    return Flow::Reconnect { progressed };
                }
            }
            window.pop_front();
        }
    }
}

/// MAIL, RCPT and DATA for one recipient, pipelined.
fn push_commands(out: &mut Vec<u8>, to: &str) {
    out.extend_from_slice(b"MAIL FROM:<bounces@acme.example>\r\nRCPT TO:<");
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(b">\r\nDATA\r\n");
}

async fn connection(
    addr: SocketAddr,
    queue: Rc<RefCell<VecDeque<u64>>>,
    template: Arc<Template>,
    campaign: Arc<spate_sim::campaign::Campaign>,
    totals: Rc<RefCell<Totals>>,
    chunking: bool,
) {
    // The header section, rendered before it joins the body.
    let mut rendered = Vec::with_capacity(1024);
    let mut body = Vec::with_capacity(template.source().len() + 512);
    let mut commands = Vec::with_capacity(256);
    // Where each of the template's variables comes from, worked out once: to, first_name,
    // code (anything else renders empty).
    let order: Vec<Option<usize>> = template
        .var_names()
        .iter()
        .map(|v| ["to", "first_name", "code"].iter().position(|k| k == v))
        .collect();
    let mut failures_in_a_row = 0;
    'connect: while !queue.borrow().is_empty() && failures_in_a_row < 50 {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            failures_in_a_row += 1;
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        totals.borrow_mut().connections += 1;
        let mut r = Replies {
            parser: ReplyParser::new(),
            buf: vec![0; 16 << 10],
        };
        let ehlo = if r.next(&mut s).await.ok() != Some(220)
            || s.write_all(b"EHLO blast.test\r\n").await.is_err()
        {
            None
        } else {
            r.next_reply(&mut s).await.ok().filter(|e| e.code == 250)
        };
        let Some(ehlo) = ehlo else {
            failures_in_a_row += 1;
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if chunking && Capabilities::from_ehlo(&ehlo).chunking {
            let bdat = Bdat {
                queue: &queue,
                template: &template,
                order: &order,
                campaign: &campaign,
                totals: &totals,
            };
            match bdat
                .transactions(&mut s, &mut r, &mut body, &mut rendered)
                .await
            {
                Flow::Quit => break 'connect,
                Flow::Reconnect { progressed } => {
                    failures_in_a_row = if progressed { 0 } else { failures_in_a_row + 1 };
                    continue 'connect;
                }
            }
        }
        // The transaction whose commands went out behind the previous one's final dot, as the
        // engine pipelines them (`[delivery] pipeline_transactions`, on by default).
        let mut behind: Option<(u64, Instant)> = None;
        loop {
            let (i, t0) = match behind.take() {
                Some(b) => b,
                None => {
                    let Some(i) = queue.borrow_mut().pop_front() else {
                        let _ = s.write_all(b"QUIT\r\n").await;
                        let _ = r.next(&mut s).await;
                        break 'connect;
                    };
                    commands.clear();
                    push_commands(&mut commands, &campaign.address(i));
                    if s.write_all(&commands).await.is_err() {
                        queue.borrow_mut().push_front(i);
                        continue 'connect;
                    }
                    (i, Instant::now())
                }
            };
            let to = campaign.address(i);
            let (name, code) = spate_sim::campaign::Campaign::vars(i);
            let mut next = None;
            let sent = async {
                let (mail, rcpt, data) = (
                    r.next(&mut s).await?,
                    r.next(&mut s).await?,
                    r.next(&mut s).await?,
                );
                if data != 354 {
                    if data < 400 {
                        // Should not happen: DATA accepted without a recipient.
                        s.write_all(b".\r\n").await?;
                        r.next(&mut s).await?;
                    }
                    let _ = mail;
                    return Ok::<(bool, u16), std::io::Error>((false, rcpt));
                }
                let ours = [to.as_bytes(), name.as_bytes(), code.as_bytes()];
                let values: Vec<&[u8]> = order
                    .iter()
                    .map(|&k| k.map_or(b"" as &[u8], |k| ours[k]))
                    .collect();
                // Straight into DATA form in one pass, as the engine renders.
                body.clear();
                let mut w = DataWriter::new();
                template.render_data(&values, &mut w, &mut body, &mut rendered);
                w.finish(&mut body);
                // The next message's commands right behind this one's final dot.
                next = queue.borrow_mut().pop_front();
                if let Some(j) = next {
                    push_commands(&mut body, &campaign.address(j));
                }
                s.write_all(&body).await?;
                let done = r.next(&mut s).await?;
                Ok((done / 100 == 2, done))
            }
            .await;
            let outcome = {
                let mut t = totals.borrow_mut();
                let _ = t.hist.record(t0.elapsed().as_micros() as u64);
                match &sent {
                    Ok((true, _)) => t.delivered += 1,
                    _ => t.failed += 1,
                }
                sent
            };
            match (outcome, next) {
                (Ok((true, _)), Some(j)) => {
                    failures_in_a_row = 0;
                    behind = Some((j, Instant::now()));
                }
                (Ok((true, _)), None) => failures_in_a_row = 0,
                // Refused after its content: the next one's commands are on their way.
                (Ok((false, code)), Some(j)) if code != 421 => {
                    behind = Some((j, Instant::now()));
                }
                (Ok((false, code)), None) if code != 421 => {
                    let _ = s.write_all(b"RSET\r\n").await;
                    if r.next(&mut s).await.is_err() {
                        continue 'connect;
                    }
                }
                (_, next) => {
                    if let Some(j) = next {
                        queue.borrow_mut().push_front(j);
                    }
                    continue 'connect;
                }
            }
        }
    }
}
