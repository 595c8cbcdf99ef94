//! Metadata sanitising for users who opt in to keeping metadata.
//!
//! Even then, two things never pass through: the EXIF thumbnail (IFD1), which is a small
//! un-redacted copy of the original photo, and the orientation tag, because the pixels are
//! already upright. XMP, IPTC and comments are never carried at all.

use exif::{Field, In, Tag, Value};

/// Rebuilds an EXIF (TIFF-structured) block from the primary image's fields only, with
/// the orientation set to 1 (upright) and without the thumbnail IFD or its image data.
/// Returns `None` when the block cannot be parsed or rewritten; then no EXIF is kept.
pub fn sanitize_exif(raw: &[u8]) -> Option<Vec<u8>> {
    let parsed = exif::Reader::new().read_raw(raw.to_vec()).ok()?;
    let upright = Field { tag: Tag::Orientation, ifd_num: In::PRIMARY, value: Value::Short(vec![1]) };
    let mut writer = exif::experimental::Writer::new();
    for field in parsed.fields() {
        if field.ifd_num != In::PRIMARY {
            continue;
        }
        if field.tag == Tag::Orientation {
            writer.push_field(&upright);
        } else if !matches!(field.tag, Tag::JPEGInterchangeFormat | Tag::JPEGInterchangeFormatLength) {
            writer.push_field(field);
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    writer.write(&mut out, parsed.little_endian()).ok()?;
    Some(out.into_inner())
}
