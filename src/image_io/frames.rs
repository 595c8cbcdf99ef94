//! What a file's structure alone says about its pictures.
//!
//! Owns these answers: does a GIF have more than one image (an animation), and is its
//! screen no larger than its images make plausible; does a TIFF have more
//! than one page (image file directory), so that every one is decoded (`sequence`); is
//! a WebP coded lossy, so that WebP output stays lossy; and is a WebP as long as its
//! RIFF header says (the decoder would not notice a cut after the last chunk it needs).
//! Does not decode pixels or check what the blocks hold (the decoders do).

/// The number of images in a GIF (image descriptors), counted up to `stop_after`; `Err`
/// when its block structure is broken.
pub(super) fn gif_images(bytes: &[u8], stop_after: usize) -> Result<usize, &'static str> {
    Ok(gif_image_sizes(bytes, stop_after)?.len())
}

/// `Err` when a GIF's logical screen (what the decoder fills and detection runs on) is
/// far larger than every image in it: over `FILLED` pixels and over `RATIO` times the
/// largest image's area. Such a header claims far more pixels than the file holds (a
/// 100-byte file would become a 100-megapixel picture, all background); encoders make
/// the screen the size of the picture.
pub(super) fn gif_check_screen(bytes: &[u8]) -> Result<(), &'static str> {
    const FILLED: u64 = 4_000_000;
    const RATIO: u64 = 64;
    let screen = bytes.get(6..10).map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])) * u64::from(u16::from_le_bytes([b[2], b[3]]))).unwrap_or(0);
    if screen <= FILLED {
        return Ok(());
    }
    let largest = gif_image_sizes(bytes, usize::MAX)?.into_iter().map(|(w, h)| u64::from(w) * u64::from(h)).max().unwrap_or(0);
    if screen > largest.saturating_mul(RATIO) {
        return Err("its screen size claims far more pixels than the images in it cover");
    }
    Ok(())
}

/// The size of each image in a GIF (image descriptors), up to `stop_after` of them;
/// `Err` when its block structure is broken.
fn gif_image_sizes(bytes: &[u8], stop_after: usize) -> Result<Vec<(u16, u16)>, &'static str> {
    const CUT: &str = "the data ends before the GIF's trailer";
    // Header (6) and logical screen descriptor (7), then the global colour table.
    let flags = *bytes.get(10).ok_or(CUT)?;
    let mut i = 13 + if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
    let mut images = Vec::new();
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
                let size = bytes.get(i + 5..i + 9).ok_or(CUT)?;
                images.push((u16::from_le_bytes([size[0], size[1]]), u16::from_le_bytes([size[2], size[3]])));
                if images.len() >= stop_after {
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

/// A TIFF or BigTIFF header: byte order and which of the two.
struct Tiff<'a> {
    bytes: &'a [u8],
    little: bool,
    big: bool,
}

const TIFF_OUTSIDE: &str = "a TIFF directory lies outside the file";

impl<'a> Tiff<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let little = match bytes.get(..2) {
            Some(b"II") => true,
            Some(b"MM") => false,
            _ => return Err("not a TIFF header"),
        };
        let mut tiff = Tiff { bytes, little, big: false };
        tiff.big = match tiff.read(2, 2)? {
            42 => false,
            43 => true,
            _ => return Err("not a TIFF header"),
        };
        Ok(tiff)
    }

    /// The `n`-byte unsigned number at `at`, in the file's byte order.
    fn read(&self, at: usize, n: usize) -> Result<u64, &'static str> {
        let b = self.bytes.get(at..at.checked_add(n).ok_or(TIFF_OUTSIDE)?).ok_or(TIFF_OUTSIDE)?;
        Ok((0..n).fold(0u64, |v, k| (v << 8) | u64::from(if self.little { b[n - 1 - k] } else { b[k] })))
    }

    /// Sizes of an offset, an entry count and an entry, and where the first offset is.
    fn sizes(&self) -> (usize, usize, usize, usize) {
        if self.big { (8, 8, 20, 8) } else { (4, 2, 12, 4) }
    }

    /// The first directory's position.
    fn first(&self) -> Result<u64, &'static str> {
        let (offset_size, _, _, first) = self.sizes();
        self.read(first, offset_size)
    }

    /// The directory at `at`: how many entries it has and where they start.
    fn entries(&self, at: usize) -> Result<(usize, usize), &'static str> {
        let (_, count_size, _, _) = self.sizes();
        let n = usize::try_from(self.read(at, count_size)?).map_err(|_| TIFF_OUTSIDE)?;
        Ok((n, at.checked_add(count_size).ok_or(TIFF_OUTSIDE)?))
    }

    /// The value of a one-value SHORT, LONG or LONG8 `tag` in the directory at `at`.
    fn tag(&self, at: usize, tag: u16) -> Result<Option<u64>, &'static str> {
        let (_, _, entry_size, _) = self.sizes();
        let (n, start) = self.entries(at)?;
        for k in 0..n {
            let entry = k.checked_mul(entry_size).and_then(|o| o.checked_add(start)).ok_or(TIFF_OUTSIDE)?;
            if self.read(entry, 2)? != u64::from(tag) {
                continue;
            }
            let size = match self.read(entry + 2, 2)? {
                3 => 2,
                4 => 4,
                16 => 8,
                _ => return Ok(None),
            };
            // Tag, type, count (4 bytes, BigTIFF 8), then the value itself (it fits).
            return self.read(entry + if self.big { 12 } else { 8 }, size).map(Some);
        }
        Ok(None)
    }
}

/// The number of pages (image file directories in the main chain) of a TIFF or BigTIFF,
/// counted up to `stop_after`; `Err` when the chain points outside the file or loops.
pub(super) fn tiff_pages(bytes: &[u8], stop_after: usize) -> Result<usize, &'static str> {
    let tiff = Tiff::new(bytes)?;
    let (offset_size, _, entry_size, _) = tiff.sizes();
    let mut next = tiff.first()?;
    let mut pages = 0;
    let mut seen = std::collections::HashSet::new();
    while next != 0 {
        let at = usize::try_from(next).map_err(|_| TIFF_OUTSIDE)?;
        if !seen.insert(at) {
            return Err("the TIFF's directories form a loop");
        }
        pages += 1;
        if pages >= stop_after {
            break;
        }
        let (entries, start) = tiff.entries(at)?;
        let after = entries.checked_mul(entry_size).and_then(|n| n.checked_add(start)).ok_or(TIFF_OUTSIDE)?;
        next = tiff.read(after, offset_size)?;
    }
    Ok(pages)
}

/// Whether a TIFF directory with these NewSubfileType (254) and SubfileType (255) values
/// is not a page: a reduced-resolution copy of another picture (a thumbnail or preview:
/// NewSubfileType bit 0, or SubfileType 2) or a transparency mask (NewSubfileType bit
/// 2). Such directories are dropped, never redacted and written back: a face in a
/// thumbnail is too small to be found, and nobody meant to share the thumbnail.
pub(super) fn tiff_is_thumbnail(new_subfile: Option<u64>, old_subfile: Option<u64>) -> bool {
    new_subfile.unwrap_or(0) & 0b101 != 0 || old_subfile == Some(2)
}

/// Whether a TIFF's first directory is a thumbnail or mask (`tiff_is_thumbnail`), as a
/// DNG's or another raw file's is (its photo in a sub-IFD): then it is not the photo,
/// and must not be read as one.
pub(super) fn tiff_first_is_thumbnail(bytes: &[u8]) -> Result<bool, &'static str> {
    let tiff = Tiff::new(bytes)?;
    let at = usize::try_from(tiff.first()?).map_err(|_| TIFF_OUTSIDE)?;
    Ok(tiff_is_thumbnail(tiff.tag(at, 254)?, tiff.tag(at, 255)?))
}

/// `Err` when a WebP is shorter than its RIFF header says (cut short), or its chunks do
/// not end where the RIFF header says the file ends.
pub(super) fn webp_check_length(bytes: &[u8]) -> Result<(), &'static str> {
    const CUT: &str = "the file is shorter than its RIFF header says (cut short)";
    let declared = bytes.get(4..8).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize).ok_or(CUT)?;
    let end = declared.checked_add(8).ok_or(CUT)?;
    if bytes.len() < end {
        return Err(CUT);
    }
    // "RIFF", size, "WEBP", then chunks, each padded to an even length (a last chunk's
    // missing pad byte is forgiven, as decoders do).
    const PAST: &str = "a WebP chunk runs past the end its RIFF header gives";
    let mut i = 12usize;
    // Fewer than a chunk header's 8 bytes left inside the RIFF: padding, not a chunk.
    while i + 8 <= end {
        let size = bytes.get(i + 4..i + 8).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize).ok_or(PAST)?;
        let chunk_end = (i + 8).checked_add(size).filter(|&e| e <= end).ok_or(PAST)?;
        i = chunk_end + (size & 1);
    }
    Ok(())
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
    fn a_webp_cut_short_or_with_a_chunk_past_its_end_is_an_error() {
        let riff = |chunks: &[u8], declared: u32| [&b"RIFF"[..], &declared.to_le_bytes(), b"WEBP", chunks].concat();
        // One 3-byte chunk (odd: a pad byte follows) and one of 2.
        let chunks = [&b"VP8L\x03\0\0\0abc\0"[..], b"EXIF\x02\0\0\0xy"].concat();
        let whole = riff(&chunks, 4 + chunks.len() as u32);
        assert_eq!(webp_check_length(&whole), Ok(()));
        // Trailing bytes after the RIFF's end are not part of it.
        assert_eq!(webp_check_length(&[&whole[..], b"junk"].concat()), Ok(()));
        // The last chunk's pad byte missing, the size not counting it: forgiven.
        let unpadded = riff(b"VP8L\x03\0\0\0abc", 4 + 11);
        assert_eq!(webp_check_length(&unpadded), Ok(()));
        // Cut in the last chunk (the frames before it whole), and cut in the header.
        assert_eq!(webp_check_length(&whole[..whole.len() - 1]), Err("the file is shorter than its RIFF header says (cut short)"));
        assert_eq!(webp_check_length(&whole[..6]), Err("the file is shorter than its RIFF header says (cut short)"));
        // A chunk claiming more than the RIFF holds, even with bytes after it.
        let liar = riff(&[&b"VP8L\xff\0\0\0abc\0"[..], &[0; 300]].concat(), 4 + 12);
        assert_eq!(webp_check_length(&liar), Err("a WebP chunk runs past the end its RIFF header gives"));
        // A stray byte inside the RIFF after the last (even) chunk: padding, accepted.
        let slack = riff(&[&b"EXIF\x02\0\0\0xy"[..], b"\0"].concat(), 4 + 11);
        assert_eq!(webp_check_length(&slack), Ok(()));
        // A size field that would overflow the end.
        assert_eq!(webp_check_length(&riff(b"", u32::MAX)), Err("the file is shorter than its RIFF header says (cut short)"));
    }

    #[test]
    fn a_tiff_whose_first_directory_is_a_thumbnail_or_mask_is_told_apart() {
        // Little-endian, one directory at 8 with the given (tag, type, value) entries.
        let tiff = |entries: &[(u16, u16, u32)]| {
            let mut t = b"II*\0\x08\0\0\0".to_vec();
            t.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_le_bytes());
            for &(tag, kind, value) in entries {
                t.extend_from_slice(&tag.to_le_bytes());
                t.extend_from_slice(&kind.to_le_bytes());
                t.extend_from_slice(&1u32.to_le_bytes());
                t.extend_from_slice(&value.to_le_bytes());
            }
            t.extend_from_slice(&[0; 4]);
            t
        };
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(256, 3, 640)])), Ok(false));
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(254, 4, 0), (256, 3, 640)])), Ok(false), "a full-resolution page");
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(254, 4, 1), (256, 3, 160)])), Ok(true), "reduced resolution (a DNG's preview)");
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(254, 4, 4)])), Ok(true), "a transparency mask");
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(254, 4, 2)])), Ok(false), "one page of several");
        assert_eq!(tiff_first_is_thumbnail(&tiff(&[(255, 3, 2)])), Ok(true), "the old SubfileType: reduced");
        // A directory count reaching past the end is an error, not a panic.
        let mut cut = tiff(&[(254, 4, 1)]);
        cut[8] = 0xFF;
        assert_eq!(tiff_first_is_thumbnail(&cut), Err("a TIFF directory lies outside the file"));
    }

    #[test]
    fn a_gif_screen_far_larger_than_its_images_is_an_error() {
        // A screen of w×h and one image of iw×ih (no palettes; a one-byte LZW stream).
        let gif = |w: u16, h: u16, iw: u16, ih: u16| {
            let mut g = b"GIF89a".to_vec();
            g.extend_from_slice(&[w.to_le_bytes(), h.to_le_bytes()].concat());
            g.extend_from_slice(&[0, 0, 0, 0x2C, 0, 0, 0, 0]);
            g.extend_from_slice(&[iw.to_le_bytes(), ih.to_le_bytes()].concat());
            g.extend_from_slice(&[0, 2, 1, 0x44, 0, 0x3B]);
            g
        };
        assert_eq!(gif_image_sizes(&gif(10, 20, 3, 4), 9), Ok(vec![(3, 4)]));
        // Small screens pass whatever their images (a sprite on a small canvas).
        assert_eq!(gif_check_screen(&gif(1000, 1000, 1, 1)), Ok(()));
        // A large screen with an image covering a fair share of it passes.
        assert_eq!(gif_check_screen(&gif(4000, 3000, 1000, 750)), Ok(()));
        // A 10,000 × 10,000 screen for a 1-pixel image does not.
        assert_eq!(gif_check_screen(&gif(10_000, 10_000, 1, 1)), Err("its screen size claims far more pixels than the images in it cover"));
        assert_eq!(gif_check_screen(&gif(4000, 3000, 400, 300)), Err("its screen size claims far more pixels than the images in it cover"));
    }

    #[test]
    fn a_gif_without_its_trailer_or_with_an_unknown_block_is_an_error() {
        let header = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
        assert!(gif_images(&header, 2).is_err());
        assert_eq!(gif_images(&[&header[..], &[0x99]].concat(), 2), Err("an unknown block in the GIF"));
        assert_eq!(gif_images(&[&header[..], &[0x3B]].concat(), 2), Ok(0));
    }
}
