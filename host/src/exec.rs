//! `condo exec NAME -- CMD`: a command run in the guest by the guest agent
//! (`agent` crate, docs/agent.md) on vsock port 1024.
//!
//! The daemon is the agent's client (`agent::client`): `POST
//! /guests/{name}/exec` with `Upgrade: exec` and an [`ExecRequest`] body
//! starts the process through the guest's hybrid vsock socket, answers 101,
//! and then relays on the connection in the agent's own frames
//! (`agent::proto`): the client sends `Stdin`, `StdinClose`, `Resize` and
//! `Signal`; the daemon sends `Stdout`, `Stderr`, `Error` and finally
//! `Exit`. The client side is [`run`]: the command's exit status becomes
//! `condo exec`'s.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use agent::client::{Client, Event};
use agent::proto::{read_frame, GuestMsg, HostMsg, MAX_DATA_CHUNK};

use crate::error::{Error, Result};
use crate::http::{self, Request, Response};
use crate::manager::Manager;
use crate::model::ExecRequest;

/// How long the agent has to answer the connection and the start.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one exec request on the client's connection (daemon side).
pub fn serve(name: &str, req: &Request, r: BufReader<UnixStream>, mut w: UnixStream, m: &Manager) {
    let started = (|| -> Result<agent::client::Session> {
        if !req
            .upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("exec"))
        {
            return Err(Error::invalid(
                "exec is a stream: send Connection: Upgrade and Upgrade: exec",
            ));
        }
        let body: ExecRequest = crate::api::body(req)?;
        let process = body.process()?;
        let sock = m.vsock_socket(name)?;
        let client = Client::vsock(sock).with_timeout(AGENT_TIMEOUT);
        client.exec(&process).map_err(|e| {
            Error::Other(format!(
                "guest {name}'s agent: {e} (the guest runs its agent with condo.agent=1 on its kernel command line)"
            ))
        })
    })();
    let mut session = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = Response::error(e.status(), e).write_to(&mut w);
            return;
        }
    };
    let head = "HTTP/1.1 101 Switching Protocols\r\nServer: condo-daemon\r\nUpgrade: exec\r\nConnection: Upgrade\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        let _ = session.signal(libc::SIGKILL);
        return;
    }
    let _ = w.set_read_timeout(None);
    // The client's messages go to the process.
    let input = session.input();
    let pending = r.buffer().to_vec();
    let client_in = r.into_inner();
    let _ = client_in.set_read_timeout(None);
    let up = std::thread::spawn(move || {
        let mut from = std::io::Cursor::new(pending).chain(client_in);
        while let Ok(Some(f)) = read_frame(&mut from) {
            let r = match HostMsg::decode(&f) {
                Ok(HostMsg::Stdin(d)) => input.write_stdin(&d),
                Ok(HostMsg::StdinClose) => input.close_stdin(),
                Ok(HostMsg::Resize(ws)) => input.resize(ws.rows, ws.cols),
                Ok(HostMsg::Signal(s)) => input.signal(s.signal),
                // Nothing else belongs on an exec stream.
                _ => break,
            };
            if r.is_err() {
                break;
            }
        }
        // The client is gone or done: the process gets end of input.
        let _ = input.close_stdin();
    });
    loop {
        // An agent's `Error` event (a refused signal or resize) leaves the
        // process running; a broken session ends the stream.
        let (msg, last) = match session.next_event() {
            Ok(Event::Stdout(d)) => (GuestMsg::Stdout(d), false),
            Ok(Event::Stderr(d)) => (GuestMsg::Stderr(d), false),
            Ok(Event::Error(e)) => (GuestMsg::Error(e), false),
            Ok(Event::Exit(s)) => (GuestMsg::Exit(s), true),
            Err(e) => (GuestMsg::Error(format!("the guest's agent: {e}")), true),
        };
        if w.write_all(&msg.to_frame_bytes()).is_err() {
            // The client left: the process is not waited for.
            let _ = session.signal(libc::SIGHUP);
            break;
        }
        if last {
            break;
        }
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

/// `condo exec NAME -- CMD...` (client side): returns the command's exit
/// status (128 + N for a signal).
pub fn run(sock: &Path, name: &str, command: &[String]) -> Result<u8> {
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (cols, rows) = if tty {
        crossterm::terminal::size().unwrap_or((80, 24))
    } else {
        (80, 24)
    };
    let req = ExecRequest {
        command: command.to_vec(),
        tty,
        rows: tty.then_some(rows),
        cols: tty.then_some(cols),
        ..ExecRequest::default()
    };
    req.process()?;
    let body = serde_json::to_string(&req).map_err(|e| Error::Other(e.to_string()))?;
    let mut s = http::connect(sock, Duration::from_secs(60)).map_err(|e| {
        Error::Other(format!(
            "cannot reach the condo daemon: {e} (is `condo daemon` running?)"
        ))
    })?;
    http::write_request(
        &mut s,
        "POST",
        &format!("/guests/{name}/exec"),
        Some(&body),
        Some("exec"),
    )
    .map_err(|e| Error::Other(format!("daemon: {e}")))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| Error::Other(e.to_string()))?);
    crate::console::expect(&mut r, 101)?;
    let _ = r.get_ref().set_read_timeout(None);
    let raw = tty && crossterm::terminal::enable_raw_mode().is_ok();
    let mut up = s;
    std::thread::spawn(move || {
        let mut i = std::io::stdin();
        let mut buf = vec![0u8; MAX_DATA_CHUNK];
        loop {
            match i.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = up.write_all(&HostMsg::StdinClose.to_frame_bytes());
                    break;
                }
                Ok(n) => {
                    if up
                        .write_all(&HostMsg::Stdin(buf[..n].to_vec()).to_frame_bytes())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let result = (|| -> Result<u8> {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        loop {
            let f = match read_frame(&mut r) {
                Ok(Some(f)) => f,
                Ok(None) => return Err(Error::Other("the daemon closed the exec stream".into())),
                Err(e) => return Err(Error::Other(format!("exec stream: {e}"))),
            };
            match GuestMsg::decode(&f).map_err(|e| Error::Other(format!("exec stream: {e}")))? {
                GuestMsg::Stdout(d) => {
                    let _ = out.write_all(&d).and_then(|()| out.flush());
                }
                GuestMsg::Stderr(d) => {
                    let _ = err.write_all(&d).and_then(|()| err.flush());
                }
                GuestMsg::Exit(st) => return Ok((st.code() & 0xff) as u8),
                GuestMsg::Error(e) if e.starts_with("the guest's agent: ") => {
                    return Err(Error::Other(e))
                }
                GuestMsg::Error(e) => {
                    let _ = writeln!(err, "condo: exec: {e}");
                }
                _ => {}
            }
        }
    })();
    if raw {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    result
}
