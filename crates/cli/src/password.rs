//! Reading a password for `spate hash-password`: one line from stdin, with echo turned off
//! while it is typed when stdin is a terminal (and turned back on, whatever happens).

use std::io::{BufRead, Write};

/// The password on stdin, without its line ending.
pub fn read() -> Result<String, String> {
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let _echo = if tty {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        Some(EchoOff::new()?)
    } else {
        None
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if tty {
        eprintln!();
    }
    read.map_err(|e| format!("spate: cannot read the password from stdin: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(password.to_string())
}

/// The terminal's echo, off until dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Result<EchoOff, String> {
        // SAFETY: tcgetattr fills the termios we own; tcsetattr reads it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return Err("spate: cannot read the terminal's settings".into());
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return Err("spate: cannot turn the terminal's echo off".into());
            }
            Ok(EchoOff(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}
