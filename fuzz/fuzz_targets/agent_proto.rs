//! The guest agent's protocol (agent::proto) as each side reads the other:
//! a byte stream split into frames in pieces of the size the first input
//! byte gives (the agent's polled reads), and by the blocking reader (the
//! client's), which must agree; every frame decoded as a host message
//! (what the agent trusts nothing of) and as a guest message (what the
//! host trusts nothing of), specs validated; whatever decodes re-encodes
//! to a frame that decodes to the same message.
#![no_main]
use agent::proto::{read_frame, Frame, FrameBuf, GuestMsg, HostMsg};
use libfuzzer_sys::fuzz_target;

fn reread(bytes: Vec<u8>) -> Frame {
    read_frame(&mut bytes.as_slice())
        .expect("a frame we encoded reads back")
        .expect("a frame we encoded is whole")
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut fb = FrameBuf::new();
    let mut frames = Vec::new();
    'pieces: for piece in stream.chunks(step) {
        fb.push(piece);
        loop {
            match fb.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => break 'pieces,
            }
        }
    }
    let mut r = stream;
    let mut n = 0;
    while let Ok(Some(f)) = read_frame(&mut r) {
        assert_eq!(Some(&f), frames.get(n), "the two readers disagree");
        n += 1;
    }
    assert_eq!(n, frames.len(), "the two readers disagree");

    for f in &frames {
        if let Ok(m) = HostMsg::decode(f) {
            match &m {
                HostMsg::Exec(p) => {
                    let _ = p.validate();
                }
                HostMsg::Setup(s) => {
                    let _ = s.validate();
                }
                _ => {}
            }
            let again = HostMsg::decode(&reread(m.to_frame_bytes())).expect("re-decode");
            assert_eq!(again, m);
        }
        if let Ok(m) = GuestMsg::decode(f) {
            let again = GuestMsg::decode(&reread(m.to_frame_bytes())).expect("re-decode");
            assert_eq!(again, m);
        }
    }
});
