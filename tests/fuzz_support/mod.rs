//! Shared by the fuzz targets' stand-ins (`serve_fuzz`, `decoders_fuzz`).

/// `base` with the bytes at `edits` (positions modulo its length) replaced, `cut` bytes cut off
/// its end and `tail` appended: a valid input made slightly wrong.
pub fn mutate(mut base: Vec<u8>, edits: &[(usize, u8)], cut: usize, tail: &[u8]) -> Vec<u8> {
    for &(at, b) in edits {
        if !base.is_empty() {
            let i = at % base.len();
            base[i] = b;
        }
    }
    base.truncate(base.len().saturating_sub(cut));
    base.extend_from_slice(tail);
    base
}
