//! The canonical byte reader and writer every ledger format is built from.
//!
//! Big-endian fixed-width integers, fixed-size byte arrays, and byte strings with an explicit
//! length prefix whose width and upper bound the format names. There is exactly one encoding of
//! each value: the reader refuses lengths over their bound, invalid UTF-8 and trailing bytes, and
//! never indexes out of bounds (every read is checked against what is left).

use crate::error::DecodeError;

/// Appends canonical fields to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        Writer { buf: Vec::new() }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A byte string with a one-byte length. The caller has checked the bound.
    pub(crate) fn bytes8(&mut self, v: &[u8]) -> &mut Self {
        self.u8(u8::try_from(v.len()).unwrap_or(u8::MAX)).raw(v)
    }

    /// A byte string with a two-byte length. The caller has checked the bound.
    pub(crate) fn bytes16(&mut self, v: &[u8]) -> &mut Self {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX)).raw(v)
    }

    /// A byte string with a four-byte length. The caller has checked the bound.
    pub(crate) fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX)).raw(v)
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical fields from a byte slice, front to back.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    field: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes, field: "start" }
    }

    /// Names the field being read, for error messages.
    pub(crate) fn field(&mut self, name: &'static str) -> &mut Self {
        self.field = name;
        self
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field: self.field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn bounded(&mut self, len: u64, max: u64) -> Result<&'a [u8], DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong { field: self.field, len, max });
        }
        let n = usize::try_from(len).map_err(|_| DecodeError::TooLong { field: self.field, len, max })?;
        self.take(n)
    }

    pub(crate) fn bytes8(&mut self, max: u64) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()?;
        self.bounded(len.into(), max)
    }

    pub(crate) fn bytes16(&mut self, max: u64) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.bounded(len.into(), max)
    }

    pub(crate) fn bytes32(&mut self, max: u64) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()?;
        self.bounded(len.into(), max)
    }

    /// A UTF-8 string with a one-byte length.
    pub(crate) fn str8(&mut self, max: u64) -> Result<String, DecodeError> {
        let field = self.field;
        let raw = self.bytes8(max)?;
        std::str::from_utf8(raw).map(str::to_string).map_err(|_| DecodeError::NotUtf8 { field })
    }

    /// Whether every byte was consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes { count: self.rest.len() as u64 }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_short_long_and_trailing_input() {
        let mut w = Writer::new();
        w.u8(7).u16(300).u32(70_000).u64(1 << 40).i64(-5).bytes8(b"abc");
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 300);
        assert_eq!(r.u32().unwrap(), 70_000);
        assert_eq!(r.u64().unwrap(), 1 << 40);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.bytes8(3).unwrap(), b"abc");
        r.finish().unwrap();

        let mut r = Reader::new(&bytes[..3]);
        r.u8().unwrap();
        assert!(matches!(r.field("x").u32(), Err(DecodeError::Truncated { field: "x" })));

        let mut r = Reader::new(&[5, b'a', b'b', b'c', b'd', b'e']);
        assert!(matches!(r.bytes8(4), Err(DecodeError::TooLong { len: 5, max: 4, .. })));

        let r = Reader::new(&[1]);
        assert!(matches!(r.finish(), Err(DecodeError::TrailingBytes { count: 1 })));

        let mut r = Reader::new(&[2, 0xff, 0xfe]);
        assert!(matches!(r.str8(8), Err(DecodeError::NotUtf8 { .. })));
    }
}
