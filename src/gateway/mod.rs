//! The SMTP submission gateway (`[[listeners]]`, `[[users]]`), sans I/O: the users'
//! password hashes (`password`), who may relay and send as whom (`policy`), and what a
//! submission server adds to a message (`submission`). The protocol is `smtp::server`'s;
//! the PROXY protocol header from a load balancer (`proxy`). The shell that serves the
//! listeners is `engine::gateway`. Its limits are in `limits`
//! (pure) and `counts` (the daily counts' file, the one piece here that does I/O).

pub mod counts;
mod header;
pub mod limits;
pub mod password;
pub mod policy;
pub mod proxy;
pub mod submission;
