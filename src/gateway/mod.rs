//! The SMTP submission gateway (`[[listeners]]`, `[[users]]`). What is built so far: the
//! protocol core's submission side (`smtp::server`: AUTH, DSN parameters, strict lines) and
//! the users' password hashes (`password`). The listeners themselves are not served yet:
//! the engine says so at start when they are configured.

pub mod password;
