//! The client side of the daemon's streams: `condo console` (the guest's
//! serial console through the daemon, the terminal in raw mode, Ctrl-]
//! detaches), `condo events` (JSON lines) and `condo exec`.

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::http;

/// The detach key: Ctrl-] (as telnet and virsh console).
pub const DETACH: u8 = 0x1d;

fn connect(sock: &Path) -> Result<std::os::unix::net::UnixStream> {
    http::connect(sock, Duration::from_secs(30)).map_err(|e| {
        Error::Other(format!(
            "cannot reach the condo daemon: {e} (is `condo daemon` running?)"
        ))
    })
}

/// Reads a response head; a non-expected status becomes the daemon's
/// error message.
pub fn expect(r: &mut BufReader<std::os::unix::net::UnixStream>, want: u16) -> Result<()> {
    let (status, len) =
        http::read_response_head(r).map_err(|e| Error::Other(format!("daemon: {e}")))?;
    if status == want {
        return Ok(());
    }
    let mut body = vec![0u8; len.unwrap_or(0).min(64 << 10)];
    let _ = r.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body);
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.into_owned());
    Err(match status {
        404 => Error::NotFound(msg),
        409 => Error::Conflict(msg),
        400 => Error::invalid(msg),
        _ => Error::Other(msg),
    })
}

/// `condo console NAME`: until the detach key or the guest's end.
pub fn attach(sock: &Path, name: &str) -> Result<u8> {
    let mut s = connect(sock)?;
    http::write_request(
        &mut s,
        "GET",
        &format!("/guests/{name}/console"),
        None,
        Some("console"),
    )
    .map_err(|e| Error::Other(format!("daemon: {e}")))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| Error::Other(e.to_string()))?);
    expect(&mut r, 101)?;
    let _ = s.set_read_timeout(None);
    let _ = r.get_ref().set_read_timeout(None);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let _ = writeln!(
        std::io::stderr(),
        "condo: console of {name}{}",
        if tty { " (detach: Ctrl-])\r" } else { "" }
    );
    let raw = tty && crossterm::terminal::enable_raw_mode().is_ok();
    // Guest output to our stdout until the console closes.
    let down = std::thread::spawn(move || {
        let mut o = std::io::stdout();
        let mut buf = [0u8; 4096];
        let pending = r.buffer().to_vec();
        let _ = o.write_all(&pending);
        let _ = o.flush();
        let mut inner = r.into_inner();
        loop {
            match inner.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if o.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let _ = o.flush();
                }
            }
        }
    });
    // Our stdin to the guest, until the detach key or the console's end.
    let up = {
        let mut s = s.try_clone().map_err(|e| Error::Other(e.to_string()))?;
        std::thread::spawn(move || {
            let mut i = std::io::stdin();
            let mut buf = [0u8; 1024];
            loop {
                match i.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = &buf[..n];
                        let cut = tty
                            .then(|| chunk.iter().position(|&b| b == DETACH))
                            .flatten();
                        if s.write_all(&chunk[..cut.unwrap_or(n)]).is_err() || cut.is_some() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        })
    };
    if tty {
        // The detach key ends the input thread, which closes the stream.
        let _ = up.join();
    }
    let _ = down.join();
    if raw {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    let _ = writeln!(std::io::stderr(), "\r\ncondo: console of {name} closed");
    Ok(0)
}

/// Copies a streamed response (`GET /events`) to stdout.
pub fn stream(sock: &Path, path: &str) -> Result<u8> {
    let mut s = connect(sock)?;
    http::write_request(&mut s, "GET", path, None, None)
        .map_err(|e| Error::Other(format!("daemon: {e}")))?;
    let _ = s.set_read_timeout(None);
    let mut r = BufReader::new(s);
    expect(&mut r, 200)?;
    let mut o = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(0),
            Ok(n) => {
                // Keep-alive blank lines are not events.
                let data: Vec<u8> = buf[..n].to_vec();
                if o.write_all(&data).is_err() {
                    return Ok(0);
                }
                let _ = o.flush();
            }
        }
    }
}
