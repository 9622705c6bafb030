//! The SMTP submission gateway (`[[listeners]]`, `[[users]]`), sans I/O: the users'
//! password hashes (`password`), who may relay and send as whom (`policy`), and what a
//! submission server adds to a message (`submission`). The protocol is `smtp::server`'s;
//! the shell that serves the listeners is `engine::gateway`.

mod header;
pub mod password;
pub mod policy;
pub mod submission;
