//! Splits a service's output stream into log lines.
//!
//! Memory per service is bounded: a line longer than the limit is cut into pieces, so a service
//! that never prints a newline cannot make PID 1 grow.

/// Bytes of an unfinished line kept per service.
pub const MAX_LINE: usize = 1024;

#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Feeds bytes read from the pipe; calls `emit` for each complete (or over-long) line.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&str)) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.take_piece(&data[..nl], emit);
            self.emit_partial(emit);
            data = &data[nl + 1..];
        }
        self.take_piece(data, emit);
    }

    /// Emits what is left when the stream ends.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            self.emit_partial(emit);
        }
    }

    fn take_piece(&mut self, mut piece: &[u8], emit: &mut dyn FnMut(&str)) {
        while self.partial.len() + piece.len() > MAX_LINE {
            let room = MAX_LINE - self.partial.len();
            self.partial.extend_from_slice(&piece[..room]);
            self.emit_partial(emit);
            piece = &piece[room..];
        }
        self.partial.extend_from_slice(piece);
    }

    fn emit_partial(&mut self, emit: &mut dyn FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.partial);
        let text = text.trim_end_matches('\r');
        emit(text);
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = LineBuffer::default();
        for c in chunks {
            buf.push(c, &mut |l| out.push(l.to_string()));
        }
        buf.finish(&mut |l| out.push(l.to_string()));
        out
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        assert_eq!(collect(&[b"he", b"llo\nwor", b"ld\n"]), vec!["hello", "world"]);
    }

    #[test]
    fn unterminated_last_line_is_emitted_at_the_end() {
        assert_eq!(collect(&[b"a\nb"]), vec!["a", "b"]);
    }

    #[test]
    fn endless_line_is_cut_at_the_limit() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let out = collect(&[&long]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[2].len(), 10);
    }

    #[test]
    fn crlf_and_invalid_utf8_are_tolerated() {
        assert_eq!(collect(&[b"ok\r\n\xff\n"]), vec!["ok", "\u{fffd}"]);
    }
}
