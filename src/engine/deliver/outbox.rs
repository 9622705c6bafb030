//! What the delivery stages send other shards (and this one): an outbox per destination and
//! mesh, drained in order by one sender task each.

use super::*;
use crate::engine::{CtlMsg, DataMsg};
use glommio::channels::local_channel::LocalReceiver;
use std::cell::RefCell;
use std::collections::VecDeque;

impl Shard {
    /// One send to another shard carried `messages` of the delivery stages' messages.
    fn count_peer_send(&self, messages: usize) {
        let (sends, msgs) = self.peer_traffic.get();
        self.peer_traffic.set((sends + 1, msgs + messages as u64));
    }

    /// Queues a control message for shard `to` (this one included). Handlers never send
    /// from where they run: `outbox_sender` does, in order, per destination.
    pub(in crate::engine) fn send_ctl(&self, to: usize, msg: CtlMsg) {
        let outbox = &self.outboxes[to];
        outbox.ctl.borrow_mut().push_back(msg);
        let _ = outbox.ctl_kick.try_send(());
    }

    /// Queues a data message for shard `to`, as `send_ctl` (in an outbox of its own: a
    /// control message never waits behind a data channel that is full).
    pub(in crate::engine) fn send_data(&self, to: usize, msg: DataMsg) {
        let outbox = &self.outboxes[to];
        outbox.data.borrow_mut().push_back(msg);
        let _ = outbox.data_kick.try_send(());
    }
}

/// What the delivery stages send one shard (this one included), per mesh, in order.
pub(in crate::engine) struct Outbox {
    ctl: RefCell<VecDeque<CtlMsg>>,
    data: RefCell<VecDeque<DataMsg>>,
    ctl_kick: LocalSender<()>,
    data_kick: LocalSender<()>,
}

impl Outbox {
    /// An outbox and the kick receivers of its two senders (control, data).
    pub fn new() -> (Outbox, LocalReceiver<()>, LocalReceiver<()>) {
        let (ctl_kick, ctl_rx) = local_channel::new_bounded(1);
        let (data_kick, data_rx) = local_channel::new_bounded(1);
        let outbox = Outbox {
            ctl: RefCell::new(VecDeque::new()),
            data: RefCell::new(VecDeque::new()),
            ctl_kick,
            data_kick,
        };
        (outbox, ctl_rx, data_rx)
    }
}

/// Messages one cross-shard send carries at most: what waits in an outbox goes in batches of
/// up to this many, so a peer is woken once per batch, not once per message.
pub const BATCH_MAX: usize = 256;

/// Up to `BATCH_MAX` messages from the front of `queue`, in order.
fn take_batch<T>(queue: &RefCell<VecDeque<T>>) -> Vec<T> {
    let mut queue = queue.borrow_mut();
    let n = queue.len().min(BATCH_MAX);
    queue.drain(..n).collect()
}

/// Sends the control messages queued for shard `to`, in order, each time it is kicked: one
/// task per destination instead of one per message, and what has gathered since the last
/// send goes in one batch (one wake-up of the peer). A message for this shard is handled
/// here, never inside the handler that sent it. A peer that is gone (shutdown) drops what is
/// sent to it, as before.
pub(in crate::engine) async fn ctl_sender(shard: Rc<Shard>, to: usize, kick: LocalReceiver<()>) {
    while kick.recv().await.is_some() {
        loop {
            let mut batch = take_batch(&shard.outboxes[to].ctl);
            if batch.is_empty() {
                break;
            }
            if to == shard.id {
                for msg in batch {
                    shard.on_control(msg);
                }
                glommio::yield_if_needed().await;
                continue;
            }
            shard.count_peer_send(batch.len());
            let msg = match batch.len() {
                1 => batch.pop().expect("one message"),
                _ => CtlMsg::Batch(batch),
            };
            let _ = shard.ctl_tx.send_to(to, msg).await;
        }
    }
}

/// `ctl_sender` for data messages (rendered messages and credit handed back).
pub(in crate::engine) async fn data_sender(shard: Rc<Shard>, to: usize, kick: LocalReceiver<()>) {
    while kick.recv().await.is_some() {
        loop {
            let mut batch = take_batch(&shard.outboxes[to].data);
            if batch.is_empty() {
                break;
            }
            if to == shard.id {
                for msg in batch {
                    shard.on_data(msg);
                }
                glommio::yield_if_needed().await;
                continue;
            }
            shard.count_peer_send(batch.len());
            let msg = match batch.len() {
                1 => batch.pop().expect("one message"),
                _ => DataMsg::Batch(batch),
            };
            let _ = shard.data_tx.send_to(to, msg).await;
        }
    }
}
