//! What a file's structure alone says about its pictures.
//!
//! Owns two answers: does a GIF have more than one image (an animation) or a TIFF more
//! than one page (image file directory), so that every one is decoded (`sequence`); and
//! is a WebP coded lossy, so that WebP output stays lossy. Does not decode pixels or
//! check what the blocks hold (the decoders do).

/// The number of images in a GIF (image descriptors), counted up to `stop_after`; `Err`
/// when its block structure is broken.
pub(super) fn gif_images(bytes: &[u8], stop_after: usize) -> Result<usize, &'static str> {
    const CUT: &str = "the data ends before the GIF's trailer";
    // Header (6) and logical screen descriptor (7), then the global colour table.
    let flags = *bytes.get(10).ok_or(CUT)?;
    let mut i = 13 + if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
    let mut images = 0;
    // Sub-blocks: a length byte and that many bytes, until a zero length.
    let skip_sub_blocks = |mut i: usize| -> Result<usize, &'static str> {
        loop {
            let len = usize::from(*bytes.get(i).ok_or(CUT)?);
            i += 1 + len;
            if len == 0 {
                return Ok(i);
            }
        }
    };
    loop {
        match *bytes.get(i).ok_or(CUT)? {
            0x3B => return Ok(images),
            0x21 => i = skip_sub_blocks(i + 2)?,
            0x2C => {
                images += 1;
                if images >= stop_after {
                    return Ok(images);
                }
                let flags = *bytes.get(i + 9).ok_or(CUT)?;
                i += 10 + if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
                i = skip_sub_blocks(i + 1)?; // after the LZW minimum code size
            }
            _ => return Err("an unknown block in the GIF"),
        }
    }
}

/// The number of pages (image file directories in the main chain) of a TIFF or BigTIFF,
/// counted up to `stop_after`; `Err` when the chain points outside the file or loops.
pub(super) fn tiff_pages(bytes: &[u8], stop_after: usize) -> Result<usize, &'static str> {
    const OUTSIDE: &str = "a TIFF directory lies outside the file";
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err("not a TIFF header"),
    };
    let read = |at: usize, n: usize| -> Result<u64, &'static str> {
        let b = bytes.get(at..at.checked_add(n).ok_or(OUTSIDE)?).ok_or(OUTSIDE)?;
        let mut v = 0u64;
        for k in 0..n {
            let byte = u64::from(if little { b[n - 1 - k] } else { b[k] });
            v = (v << 8) | byte;
        }
        Ok(v)
    };
    let big = match read(2, 2)? {
        42 => false,
        43 => true,
        _ => return Err("not a TIFF header"),
    };
    let (offset_size, count_size, entry_size, first) = if big { (8, 8, 20, 8) } else { (4, 2, 12, 4) };
    let mut next = read(first, offset_size)?;
    let mut pages = 0;
    let mut seen = std::collections::HashSet::new();
    while next != 0 {
        let at = usize::try_from(next).map_err(|_| OUTSIDE)?;
        if !seen.insert(at) {
            return Err("the TIFF's directories form a loop");
        }
        pages += 1;
        if pages >= stop_after {
            break;
        }
        let entries = usize::try_from(read(at, count_size)?).map_err(|_| OUTSIDE)?;
        let after = entries.checked_mul(entry_size).and_then(|n| n.checked_add(at.checked_add(count_size)?)).ok_or(OUTSIDE)?;
        next = read(after, offset_size)?;
    }
    Ok(pages)
}

/// Whether a WebP holds lossy-coded pictures: a `VP8 ` chunk at the top level or inside
/// an animation frame (`ANMF`). A file cut short answers from what it has.
pub(super) fn webp_is_lossy(bytes: &[u8]) -> bool {
    fn chunks_lossy(bytes: &[u8], mut i: usize, depth: u8) -> bool {
        while let (Some(fourcc), Some(size)) = (bytes.get(i..i + 4), bytes.get(i + 4..i + 8)) {
            let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
            let body = i + 8;
            match fourcc {
                b"VP8 " => return true,
                // An animation frame: 16 bytes of position and timing, then its chunks.
                b"ANMF" if depth == 0 => {
                    let end = body.saturating_add(size).min(bytes.len());
                    if chunks_lossy(&bytes[..end], body + 16, 1) {
                        return true;
                    }
                }
                _ => {}
            }
            i = body.saturating_add(size).saturating_add(size & 1);
        }
        false
    }
    // "RIFF", size, "WEBP", then chunks.
    chunks_lossy(bytes, 12, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile directory pointers: past the end, at the very top of the address range,
    /// and a chain that points back at itself.
    #[test]
    fn hostile_tiff_directory_chains_are_errors_not_panics() {
        let mut far = b"II*\0".to_vec();
        far.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(tiff_pages(&far, 2), Err("a TIFF directory lies outside the file"));
        let mut big = b"II+\0\x08\0\0\0".to_vec();
        big.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(tiff_pages(&big, 2), Err("a TIFF directory lies outside the file"));
        // One directory with no entries whose next pointer is itself.
        let mut looped = b"II*\0\x08\0\0\0".to_vec();
        looped.extend_from_slice(&[0, 0, 8, 0, 0, 0]);
        assert_eq!(tiff_pages(&looped, 3), Err("the TIFF's directories form a loop"));
    }

    #[test]
    fn a_gif_without_its_trailer_or_with_an_unknown_block_is_an_error() {
        let header = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
        assert!(gif_images(&header, 2).is_err());
        assert_eq!(gif_images(&[&header[..], &[0x99]].concat(), 2), Err("an unknown block in the GIF"));
        assert_eq!(gif_images(&[&header[..], &[0x3B]].concat(), 2), Ok(0));
    }
}
