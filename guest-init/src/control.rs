//! Host → guest control lines arriving on the serial console.
//!
//! Protocol: ASCII lines ending in `\n` (an optional `\r` before it is
//! ignored). One command exists:
//!
//! - `signal N` — send signal N (1..=64) to the app, e.g. `signal 15` for a
//!   graceful stop, `signal 9` to kill it.
//!
//! The console RX is a byte stream, so a line may arrive split over several
//! reads and a read may carry several lines; [`ControlParser`] is a small
//! streaming state machine fed with whatever `read` returned. It never panics
//! and keeps at most [`MAX_HELD`] bytes, however long a line is.
//!
//! In *control-only* mode (the app's stdin is /dev/null) every line that is not
//! a command is reported as [`Event::Invalid`]. In *interactive* mode the app's
//! stdin is fed from the console: bytes are passed through as [`Event::Data`]
//! as soon as they cannot start a command any more, so only lines beginning
//! with `signal ` are held back until their end (and consumed if they are a
//! valid command).

/// The longest prefix held back while deciding whether a line is a command.
/// Longer lines are data (interactive) or reported truncated (control-only).
pub const MAX_HELD: usize = 64;

const SIGNAL_PREFIX: &[u8] = b"signal ";
/// Highest signal number Linux knows (SIGRTMAX on x86_64).
const MAX_SIGNAL: i32 = 64;

/// A command from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Forward this signal number to the app.
    Signal(i32),
}

/// What the parser made of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    /// Bytes for the app's stdin (interactive mode only).
    Data(Vec<u8>),
    /// A complete line that is not a command (control-only mode); the text is
    /// shown lossily and cut at [`MAX_HELD`] bytes.
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ControlOnly,
    Interactive,
}

#[derive(Debug)]
pub struct ControlParser {
    mode: Mode,
    /// Bytes of the current line held back (at most MAX_HELD).
    held: Vec<u8>,
    /// The current line is known not to be a command: pass it through
    /// (interactive) or skip it (control-only) up to its `\n`.
    skipping: bool,
    /// Control-only: the current line was longer than MAX_HELD.
    truncated: bool,
}

impl ControlParser {
    pub fn new(mode: Mode) -> ControlParser {
        ControlParser {
            mode,
            held: Vec::with_capacity(MAX_HELD),
            skipping: false,
            truncated: false,
        }
    }

    /// Feed the bytes of one read; complete events are appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Event>) {
        let mut data: Vec<u8> = Vec::new();
        for &b in input {
            self.byte(b, &mut data, out);
        }
        if !data.is_empty() {
            out.push(Event::Data(data));
        }
    }

    fn byte(&mut self, b: u8, data: &mut Vec<u8>, out: &mut Vec<Event>) {
        if self.skipping {
            match self.mode {
                Mode::Interactive => data.push(b),
                Mode::ControlOnly if b != b'\n' => self.hold(b),
                Mode::ControlOnly => {}
            }
            if b == b'\n' {
                self.end_skipped_line(out);
            }
            return;
        }
        if b == b'\n' {
            match parse_line(&self.held) {
                Some(cmd) => {
                    // Keep the order of data and commands.
                    if !data.is_empty() {
                        out.push(Event::Data(std::mem::take(data)));
                    }
                    out.push(Event::Command(cmd));
                }
                None => match self.mode {
                    Mode::Interactive => {
                        data.extend_from_slice(&self.held);
                        data.push(b'\n');
                    }
                    // Empty lines are how a sender resynchronises: silent.
                    Mode::ControlOnly if is_blank(&self.held) => {}
                    Mode::ControlOnly => out.push(Event::Invalid(show(&self.held, false))),
                },
            }
            self.held.clear();
            return;
        }
        self.hold(b);
        if self.truncated || !could_be_command(&self.held) {
            self.skipping = true;
            if self.mode == Mode::Interactive {
                data.append(&mut self.held);
            }
        }
    }

    fn hold(&mut self, b: u8) {
        if self.held.len() < MAX_HELD {
            self.held.push(b);
        } else {
            self.truncated = true;
        }
    }

    fn end_skipped_line(&mut self, out: &mut Vec<Event>) {
        if self.mode == Mode::ControlOnly && !is_blank(&self.held) {
            out.push(Event::Invalid(show(&self.held, self.truncated)));
        }
        self.held.clear();
        self.skipping = false;
        self.truncated = false;
    }
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, [] | [b'\r'])
}

fn show(line: &[u8], truncated: bool) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut s = String::from_utf8_lossy(line).into_owned();
    if truncated {
        s.push('…');
    }
    s
}

/// Can `line` (no `\n` yet) still become a valid command?
fn could_be_command(line: &[u8]) -> bool {
    if line.len() <= SIGNAL_PREFIX.len() {
        return SIGNAL_PREFIX.starts_with(line);
    }
    match line.strip_prefix(SIGNAL_PREFIX) {
        Some(rest) => {
            let digits = rest.strip_suffix(b"\r").unwrap_or(rest);
            digits.len() <= 2 && digits.iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

/// Parse one complete line (without its `\n`).
pub fn parse_line(line: &[u8]) -> Option<Command> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(SIGNAL_PREFIX)?;
    if digits.is_empty() || digits.len() > 2 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
    (1..=MAX_SIGNAL).contains(&n).then_some(Command::Signal(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = ControlParser::new(mode);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    /// Merge adjacent Data events: how they are split is not part of the contract.
    fn merged(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            if let (Some(Event::Data(prev)), Event::Data(d)) = (out.last_mut(), &e) {
                prev.extend_from_slice(d);
                continue;
            }
            out.push(e);
        }
        out
    }

    #[test]
    fn valid_lines() {
        assert_eq!(parse_line(b"signal 15"), Some(Command::Signal(15)));
        assert_eq!(parse_line(b"signal 9\r"), Some(Command::Signal(9)));
        assert_eq!(parse_line(b"signal 1"), Some(Command::Signal(1)));
        assert_eq!(parse_line(b"signal 64"), Some(Command::Signal(64)));
        assert_eq!(
            run(Mode::ControlOnly, &[b"signal 15\nsignal 2\n"]),
            vec![
                Event::Command(Command::Signal(15)),
                Event::Command(Command::Signal(2))
            ]
        );
    }

    #[test]
    fn garbage_lines() {
        for bad in [
            &b"signal"[..],
            b"signal ",
            b"signal 0",
            b"signal 65",
            b"signal 99",
            b"signal 123",
            b"signal -1",
            b"signal 1 5",
            b"signal x",
            b"SIGNAL 15",
            b" signal 15",
            b"stop",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            run(Mode::ControlOnly, &[b"hello\nsignal 0\n\xffx\nsignal 3\n"]),
            vec![
                Event::Invalid("hello".into()),
                Event::Invalid("signal 0".into()),
                Event::Invalid("\u{fffd}x".into()),
                Event::Command(Command::Signal(3)),
            ]
        );
    }

    #[test]
    fn lines_split_across_reads() {
        let chunks: &[&[u8]] = &[b"sig", b"nal", b" 1", b"5", b"\r", b"\nsignal 9", b"\n"];
        assert_eq!(
            run(Mode::ControlOnly, chunks),
            vec![
                Event::Command(Command::Signal(15)),
                Event::Command(Command::Signal(9))
            ]
        );
        // One byte per read.
        let text = b"junk\nsignal 10\n";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(
            run(Mode::ControlOnly, &bytes),
            vec![
                Event::Invalid("junk".into()),
                Event::Command(Command::Signal(10))
            ]
        );
        // A partial line produces nothing until its end.
        assert_eq!(run(Mode::ControlOnly, &[b"signal 1"]), vec![]);
        // A leading newline ends whatever partial line came before (noise
        // at boot); empty lines are silent.
        assert_eq!(
            run(Mode::ControlOnly, &[b"nal 1", b"\n\r\n\nsignal 15\n"]),
            vec![
                Event::Invalid("nal 1".into()),
                Event::Command(Command::Signal(15))
            ]
        );
    }

    #[test]
    fn very_long_lines_are_bounded() {
        let mut p = ControlParser::new(Mode::ControlOnly);
        let mut out = Vec::new();
        let big = vec![b'a'; 1 << 20];
        p.feed(&big, &mut out);
        assert!(out.is_empty());
        assert!(p.held.len() <= MAX_HELD);
        p.feed(b"\nsignal 15\n", &mut out);
        match &out[..] {
            [Event::Invalid(s), Event::Command(Command::Signal(15))] => {
                assert!(s.ends_with('…'));
                assert!(s.len() <= MAX_HELD + 4);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A long line that starts like a command is not one either.
        let mut long = b"signal ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 500));
        long.push(b'\n');
        let ev = run(Mode::ControlOnly, &[&long]);
        assert!(matches!(&ev[..], [Event::Invalid(_)]), "{ev:?}");
    }

    #[test]
    fn interactive_passes_data_through() {
        let ev = merged(run(
            Mode::Interactive,
            &[b"hello\nsig", b"nal 15\nsignal x\n", b"more"],
        ));
        assert_eq!(
            ev,
            vec![
                Event::Data(b"hello\n".to_vec()),
                Event::Command(Command::Signal(15)),
                Event::Data(b"signal x\nmore".to_vec()),
            ]
        );
        // Bytes that cannot start a command are not held back.
        assert_eq!(
            run(Mode::Interactive, &[b"ab"]),
            vec![Event::Data(b"ab".to_vec())]
        );
        // A prefix of a command is held until decided.
        assert_eq!(run(Mode::Interactive, &[b"sign"]), vec![]);
        let long = vec![b'z'; 10_000];
        let ev = merged(run(Mode::Interactive, &[&long, b"\n"]));
        let mut want = long.clone();
        want.push(b'\n');
        assert_eq!(ev, vec![Event::Data(want)]);
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        // A cheap deterministic fuzz: xorshift bytes biased towards the
        // protocol's alphabet, fed in random chunk sizes.
        let alphabet = b"signal 0123456789\r\n\xff ";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for mode in [Mode::ControlOnly, Mode::Interactive] {
            let mut p = ControlParser::new(mode);
            let mut out = Vec::new();
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 97) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|i| alphabet[((x >> (i % 50)) as usize + i) % alphabet.len()])
                    .collect();
                p.feed(&chunk, &mut out);
                assert!(p.held.len() <= MAX_HELD);
            }
            for e in &out {
                if let Event::Command(Command::Signal(n)) = e {
                    assert!((1..=64).contains(n));
                }
            }
        }
    }
}
