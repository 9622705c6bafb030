//! A transfer from another node of the cluster (`spate drain`, `crate::queue::transfer`)
//! as an input: its message and recipients as that node queued them, checked as any input
//! of this node is, each recipient with its retry state.

use super::*;

impl<'a> Parser<'a> {
    /// A transfer from another node: its message as that node queued it (its template or
    /// verbatim body, envelope, labels, creation time and flags), checked as an input of
    /// this node would be; refused whole if the file is damaged or names a pool this node
    /// lacks. Its batch id is the transfer's own, which its spool name carries.
    pub(super) fn open_transfer(
        &mut self,
        batch_id: u64,
        egress: &crate::config::Egress,
    ) -> Result<(), FileError> {
        let (header, m, recipients) =
            crate::queue::transfer::open(self.bytes).map_err(|e| file_error(None, e))?;
        if header.id != batch_id {
            return Err(file_error(
                None,
                format!(
                    "transfer {:016x} under the name of transfer {batch_id:016x}",
                    header.id
                ),
            ));
        }
        if !m.sender.is_empty() {
            let sender = parse_address(m.sender)
                .map_err(|e| file_error(None, format!("transfer sender: {e}")))?;
            if sender.to_addr_string() != m.sender {
                return Err(file_error(None, "transfer sender is not in its plain form"));
            }
        }
        check_label("campaign", m.campaign)?;
        check_label("tenant", m.tenant)?;
        if !m.pool.is_empty() {
            egress
                .pool_for(Some(m.pool), m.tenant)
                .map_err(|e| file_error(None, format!("transfer pool: {e} on this node")))?;
        }
        if m.body.len() > MESSAGE_BYTES_MAX {
            return Err(file_error(
                None,
                format!("message is over the {MESSAGE_BYTES_MAX}-byte limit"),
            ));
        }
        let var_names: Vec<String> = m.var_names.iter().map(|n| n.to_string()).collect();
        if m.flags & MESSAGE_VERBATIM != 0 {
            check_pickup_header(m.body, 1)?;
        } else {
            let template = Template::parse(m.body.to_vec())
                .map_err(|e| file_error(None, format!("transfer template: {}", e.0)))?;
            if template.var_names() != var_names.as_slice() {
                return Err(file_error(
                    None,
                    "transfer template: its placeholders are not the message's names",
                ));
            }
            self.template = template;
        }
        self.message = Arc::new(MessageSpec {
            batch_id,
            created_unix_ms: m.created_unix_ms,
            flags: m.flags,
            sender: m.sender.to_string(),
            campaign: m.campaign.to_string(),
            tenant: m.tenant.to_string(),
            var_names,
            body: m.body.to_vec(),
            pool: m.pool.to_string(),
        });
        self.pos = self.bytes.len();
        self.transfer = Some(recipients);
        self.source_node = header.node.to_string();
        Ok(())
    }

    /// A transfer's recipient, checked as a batch's would be; its record is kept as sent.
    pub(super) fn transfer_recipient(
        &mut self,
        r: crate::queue::transfer::TransferRecipient<'a>,
    ) -> Result<String, Rejection> {
        self.line_no += 1;
        let reject = |reason: String| Rejection {
            line: self.line_no,
            recipient: r.recipient.to_string(),
            reason,
        };
        let address = parse_address(r.recipient).map_err(|e| reject(e.0))?;
        let rcpt = address.to_addr_string();
        if rcpt != r.recipient {
            return Err(reject("recipient is not in its plain form".into()));
        }
        if self.message.flags & MESSAGE_VERBATIM == 0 {
            let values: Result<Vec<&str>, _> =
                r.values.iter().map(|v| std::str::from_utf8(v)).collect();
            let values = values.map_err(|_| reject("a value is not UTF-8".into()))?;
            self.template
                .check_values(&values)
                .map_err(|e| reject(e.0))?;
        }
        self.transferred = Some((r.tail, r.retry));
        Ok(rcpt)
    }
}
