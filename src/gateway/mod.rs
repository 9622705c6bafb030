//! The SMTP submission gateway (`[[listeners]]`, `[[users]]`). What is built so far: the
//! protocol core's submission side (`smtp::server`: AUTH, DSN parameters, strict lines),
//! the users' password hashes (`password`), and who may relay and send as whom
//! (`policy`). The listeners themselves are not served yet: the engine says so at start
//! when they are configured.

pub mod password;
pub mod policy;
