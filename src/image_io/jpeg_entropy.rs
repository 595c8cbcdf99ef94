//! Whether a JPEG's entropy-coded data codes every block its header promises.
//!
//! Owns one check: walk each scan's Huffman-coded data, block by block, and refuse a
//! file whose data runs out (reaches a marker) before the scan's last block. A file cut
//! short and given a new end-of-image marker passes every structural check, and decoders
//! (zune-jpeg, libjpeg with a warning) fill the missing part in, grey or smeared; this is
//! how it is told apart from a whole photo. Also refuses a frame component no scan codes.
//!
//! Does not own decoding pixels (zune-jpeg does), nor segment structure, lengths or
//! unsupported coding processes (`jpeg_check_structure` in the parent module, which runs
//! first), nor memory limits (checked before this runs: the only allocation here, one
//! bit mask per block for progressive refinement scans, is an eighth of the pixels').

/// A Huffman table as the decoder uses it: for each code length, the largest code of
/// that length and where its symbols start; plus a lookup table of the first 9 bits.
struct Huffman {
    /// `maxcode[l]`: the largest code of length `l` (+1), or 0 when none; `l` in 1..=16.
    maxcode: [i32; 18],
    /// `valptr[l] - mincode[l]`: added to a code of length `l` to index `values`.
    delta: [i32; 17],
    values: Vec<u8>,
    /// First `LOOKAHEAD` bits → (length, symbol); length 0 when longer.
    fast: Vec<(u8, u8)>,
}

const LOOKAHEAD: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Huffman, &'static str> {
        let mut maxcode = [0i32; 18];
        let mut delta = [0i32; 17];
        let mut fast = vec![(0u8, 0u8); 1 << LOOKAHEAD];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16usize {
            let n = usize::from(counts[len - 1]);
            if k + n > values.len() {
                return Err("a Huffman table has more codes than symbols");
            }
            delta[len] = k as i32 - code;
            // Codes of each length must fit in that many bits.
            if code + n as i32 > (1 << len) {
                return Err("a Huffman table's codes do not fit their lengths");
            }
            for i in 0..n {
                if len as u32 <= LOOKAHEAD {
                    let shift = LOOKAHEAD - len as u32;
                    let first = ((code as usize) + i) << shift;
                    for entry in &mut fast[first..first + (1 << shift)] {
                        *entry = (len as u8, values[k + i]);
                    }
                }
            }
            code += n as i32;
            k += n;
            maxcode[len] = if n > 0 { code } else { 0 };
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Huffman { maxcode, delta, values: values[..k].to_vec(), fast })
    }
}

/// Reads bits from entropy-coded data: `FF 00` is a data byte `FF`; any other marker ends
/// the data (a restart marker is consumed by [`Bits::restart`]).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buffer: u64,
    count: u32,
    /// The data reached a marker: no more bytes come.
    at_marker: bool,
}

/// The data ran out before the block being read was complete.
struct RanOut;

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Bits<'a> {
        Bits { data, pos, buffer: 0, count: 0, at_marker: false }
    }

    /// Fills the buffer to at least 57 bits, or as far as the data goes.
    fn fill(&mut self) {
        while self.count <= 56 && !self.at_marker {
            let byte = match self.data.get(self.pos) {
                Some(&0xFF) => match self.data.get(self.pos + 1) {
                    Some(0x00) => {
                        self.pos += 2;
                        0xFF
                    }
                    _ => {
                        self.at_marker = true;
                        break;
                    }
                },
                Some(&b) => {
                    self.pos += 1;
                    b
                }
                None => {
                    self.at_marker = true;
                    break;
                }
            };
            self.buffer |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    fn bits(&mut self, n: u32) -> Result<u32, RanOut> {
        if n == 0 {
            return Ok(0);
        }
        if self.count < n {
            self.fill();
            if self.count < n {
                return Err(RanOut);
            }
        }
        let value = (self.buffer >> (64 - n)) as u32;
        self.buffer <<= n;
        self.count -= n;
        Ok(value)
    }

    fn symbol(&mut self, table: &Huffman) -> Result<Result<u8, &'static str>, RanOut> {
        if self.count < 16 {
            self.fill();
        }
        let peek = (self.buffer >> (64 - LOOKAHEAD)) as usize;
        let (len, value) = table.fast[peek];
        if len > 0 {
            if u32::from(len) > self.count {
                return Err(RanOut);
            }
            self.buffer <<= len;
            self.count -= u32::from(len);
            return Ok(Ok(value));
        }
        let mut len = LOOKAHEAD as usize + 1;
        let code16 = (self.buffer >> 48) as i32;
        while len <= 16 {
            let code = code16 >> (16 - len);
            if code < table.maxcode[len] {
                if len as u32 > self.count {
                    return Err(RanOut);
                }
                self.buffer <<= len;
                self.count -= len as u32;
                let index = (code + table.delta[len]) as usize;
                return Ok(table.values.get(index).copied().ok_or("a Huffman code has no symbol"));
            }
            len += 1;
        }
        if self.count < 16 {
            return Err(RanOut);
        }
        Ok(Err("a Huffman code matches no table entry"))
    }

    /// At a restart marker: drops the bits left in the current byte and reads past the
    /// marker. False when the next thing is not a restart marker.
    fn restart(&mut self) -> bool {
        // Whole unread bytes still in the buffer mean the interval had more data than it
        // coded; decoders skip it, and so does this.
        self.buffer = 0;
        self.count = 0;
        while self.pos < self.data.len() {
            match (self.data[self.pos], self.data.get(self.pos + 1)) {
                (0xFF, Some(0xD0..=0xD7)) => {
                    self.pos += 2;
                    self.at_marker = false;
                    return true;
                }
                (0xFF, Some(0x00)) => self.pos += 2,
                (0xFF, Some(0xFF)) => self.pos += 1,
                (0xFF, _) => return false,
                _ => self.pos += 1,
            }
        }
        false
    }
}

/// A frame component: its id, sampling factors, and its block grid.
#[derive(Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    /// Blocks across and down that carry pixels (a non-interleaved scan codes these).
    blocks_w: usize,
    blocks_h: usize,
    /// Coded in a scan that starts at the DC coefficient.
    dc_coded: bool,
    /// Progressive only: which coefficients of each block are non-zero so far (bit k).
    nonzero: Vec<u64>,
    /// Progressive only: for each coefficient, the lowest bit position (Al) coded so far
    /// (`u8::MAX`: not yet coded). A whole file codes every coefficient down to bit 0.
    precision: [u8; 64],
}

/// Checks that every scan's coded data codes all its blocks and that every component is
/// coded. `Err` says what is wrong. Expects a file that passed the structural check.
pub(super) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut components: Vec<Component> = Vec::new();
    let (mut width, mut height, mut progressive, mut restart_interval) = (0usize, 0usize, false, 0usize);
    let (mut h_max, mut v_max) = (1usize, 1usize);
    let mut i = 2;
    loop {
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let marker = match (bytes.get(i), bytes.get(i + 1)) {
            (Some(0xFF), Some(&m)) => m,
            (Some(_), _) => {
                i += 1; // a stray byte, skipped as the structural check does
                continue;
            }
            _ => return Err("the data ends before the end-of-image marker".into()),
        };
        i += 2;
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(i).ok_or("truncated segment")?, *bytes.get(i + 1).ok_or("truncated segment")?]));
        let segment = bytes.get(i + 2..i + len).ok_or("a segment runs past the end of the file")?;
        i += len;
        match marker {
            0xC0..=0xC2 => {
                progressive = marker == 0xC2;
                if segment.len() < 6 {
                    return Err("a frame header is too short".into());
                }
                height = usize::from(u16::from_be_bytes([segment[1], segment[2]]));
                width = usize::from(u16::from_be_bytes([segment[3], segment[4]]));
                let n = usize::from(segment[5]);
                let specs = segment.get(6..6 + 3 * n).ok_or("a frame header is too short")?;
                components = specs
                    .chunks(3)
                    .map(|c| Component { id: c[0], h: usize::from(c[1] >> 4).max(1), v: usize::from(c[1] & 15).max(1), blocks_w: 0, blocks_h: 0, dc_coded: false, nonzero: Vec::new(), precision: [u8::MAX; 64] })
                    .collect();
                h_max = components.iter().map(|c| c.h).max().unwrap_or(1);
                v_max = components.iter().map(|c| c.v).max().unwrap_or(1);
                for c in &mut components {
                    c.blocks_w = (width * c.h).div_ceil(h_max).div_ceil(8);
                    c.blocks_h = (height * c.v).div_ceil(v_max).div_ceil(8);
                }
            }
            0xC4 => {
                let mut rest = segment;
                while !rest.is_empty() {
                    let class_id = rest[0];
                    let counts: [u8; 16] = rest.get(1..17).ok_or("a Huffman table is too short")?.try_into().unwrap();
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let values = rest.get(17..17 + total).ok_or("a Huffman table is too short")?;
                    let table = Huffman::new(&counts, values)?;
                    let slot = usize::from(class_id & 3);
                    if class_id >> 4 == 0 { dc[slot] = Some(table) } else { ac[slot] = Some(table) }
                    rest = &rest[17 + total..];
                }
            }
            0xDD => {
                restart_interval = usize::from(u16::from_be_bytes([*segment.first().ok_or("a restart interval segment is too short")?, *segment.get(1).ok_or("a restart interval segment is too short")?]));
            }
            0xDA => {
                if components.is_empty() {
                    return Err("a scan comes before the frame header".into());
                }
                if width == 0 || height == 0 {
                    return Err("the frame header gives a zero width or height".into());
                }
                let n = usize::from(*segment.first().ok_or("a scan header is too short")?);
                let specs = segment.get(1..1 + 2 * n).ok_or("a scan header is too short")?;
                let tail = segment.get(1 + 2 * n..4 + 2 * n).ok_or("a scan header is too short")?;
                let scan = Scan {
                    members: specs
                        .chunks(2)
                        .map(|s| components.iter().position(|c| c.id == s[0]).map(|at| (at, usize::from(s[1] >> 4) & 3, usize::from(s[1]) & 3)))
                        .collect::<Option<Vec<_>>>()
                        .ok_or("a scan names a component the frame does not have")?,
                    ss: usize::from(tail[0]),
                    se: usize::from(tail[1]),
                    ah: tail[2] >> 4,
                    al: tail[2] & 15,
                };
                let end = walk_scan(bytes, i, &scan, &mut components, (&dc, &ac), (progressive, restart_interval), (width, height, h_max, v_max))?;
                for &(at, _, _) in &scan.members {
                    let c = &mut components[at];
                    c.dc_coded |= scan.ss == 0;
                    let band = if progressive { scan.ss..=scan.se.min(63) } else { 0..=63 };
                    for k in band {
                        c.precision[k] = c.precision[k].min(if progressive { scan.al } else { 0 });
                    }
                }
                i = end;
            }
            _ => {}
        }
    }
    if let Some(c) = components.iter().find(|c| !c.dc_coded) {
        return Err(format!("no scan codes component {} (its pixels would be made up)", c.id));
    }
    // A progressive file cut between two scans, given a new end marker, decodes to a
    // complete but coarser picture; its scans stop before every coefficient is whole.
    if progressive && components.iter().any(|c| c.precision.iter().any(|&p| p != 0)) {
        return Err("its scans end before every coefficient is complete: the file was cut short (the rest would be made up)".into());
    }
    Ok(())
}

struct Scan {
    /// (component index, DC table, AC table) for each component in the scan.
    members: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u8,
    /// The lowest bit this scan codes (successive approximation).
    al: u8,
}

type Tables<'t> = (&'t [Option<Huffman>; 4], &'t [Option<Huffman>; 4]);

/// Walks one scan's coded data from `start`; returns where its data ends (the next marker
/// that is not a restart marker).
fn walk_scan(bytes: &[u8], start: usize, scan: &Scan, components: &mut [Component], (dc, ac): Tables, (progressive, restart_interval): (bool, usize), (width, height, h_max, v_max): (usize, usize, usize, usize)) -> Result<usize, String> {
    let table = |tables: &'_ [Option<Huffman>; 4], slot: usize, kind: &str| -> Result<(), String> {
        tables[slot].as_ref().map(|_| ()).ok_or_else(|| format!("a scan uses a {kind} Huffman table the file does not define"))
    };
    let dc_first = !progressive || (scan.ss == 0 && scan.ah == 0);
    let dc_refine = progressive && scan.ss == 0 && scan.ah > 0;
    let ac_scan = progressive && scan.ss > 0;
    for &(_, d, a) in &scan.members {
        if dc_first {
            table(dc, d, "DC")?;
        }
        if !progressive || ac_scan {
            table(ac, a, "AC")?;
        }
    }
    if progressive && scan.ss == 0 && scan.se != 0 {
        return Err("a progressive DC scan also codes AC coefficients".into());
    }
    if ac_scan {
        if scan.members.len() != 1 {
            return Err("a progressive AC scan codes more than one component".into());
        }
        if scan.se > 63 || scan.ss > scan.se {
            return Err("a progressive scan's spectral range is invalid".into());
        }
        // What AC scans make non-zero decides how many bits later refinement scans read.
        let c = &mut components[scan.members[0].0];
        if c.nonzero.is_empty() {
            c.nonzero = vec![0; c.blocks_w * c.blocks_h];
        }
    }
    // The blocks in coding order: one component alone is coded block by block over its
    // own grid; several are interleaved in MCUs of h×v blocks each. Each member with its
    // tables and its blocks per unit.
    let (units, blocks_per_unit): (usize, Vec<((usize, usize, usize), usize)>) = if scan.members.len() == 1 {
        let c = &components[scan.members[0].0];
        (c.blocks_w * c.blocks_h, vec![(scan.members[0], 1)])
    } else {
        let mcus = width.div_ceil(8 * h_max) * height.div_ceil(8 * v_max);
        (mcus, scan.members.iter().map(|&m| (m, components[m.0].h * components[m.0].v)).collect())
    };
    let mut bits = Bits::new(bytes, start);
    let mut eobrun = 0u32;
    let ran_out = |unit: usize| format!("its coded data ends at {unit} of {units} blocks or MCUs of a scan: the file was cut short (the rest would be made up)");
    for unit in 0..units {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            if !bits.restart() {
                return Err(ran_out(unit));
            }
            eobrun = 0;
        }
        for &((at, d, a), count) in &blocks_per_unit {
            for _ in 0..count {
                let result = if !progressive {
                    sequential_block(&mut bits, dc[d].as_ref().unwrap(), ac[a].as_ref().unwrap())
                } else if dc_first {
                    dc_block(&mut bits, dc[d].as_ref().unwrap())
                } else if dc_refine {
                    bits.bits(1).map(|_| Ok(()))
                } else {
                    let c = &mut components[at];
                    let mask = &mut c.nonzero[unit];
                    if scan.ah == 0 {
                        ac_first_block(&mut bits, ac[a].as_ref().unwrap(), scan.ss, scan.se, &mut eobrun, mask)
                    } else {
                        ac_refine_block(&mut bits, ac[a].as_ref().unwrap(), scan.ss, scan.se, &mut eobrun, mask)
                    }
                };
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(corrupt)) => return Err(corrupt.into()),
                    Err(RanOut) => return Err(ran_out(unit)),
                }
            }
        }
    }
    Ok(super::entropy_data_end(bytes, bits.pos).unwrap_or(bytes.len()))
}

type Block = Result<Result<(), &'static str>, RanOut>;

fn dc_block(bits: &mut Bits, dc: &Huffman) -> Block {
    let s = match bits.symbol(dc)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    if s > 16 {
        return Ok(Err("a DC difference is longer than 16 bits"));
    }
    bits.bits(u32::from(s))?;
    Ok(Ok(()))
}

fn sequential_block(bits: &mut Bits, dc: &Huffman, ac: &Huffman) -> Block {
    if let Err(e) = dc_block(bits, dc)? {
        return Ok(Err(e));
    }
    let mut k = 1;
    while k < 64 {
        let rs = match bits.symbol(ac)? {
            Ok(rs) => rs,
            Err(e) => return Ok(Err(e)),
        };
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s == 0 {
            if r != 15 {
                break;
            }
            k += 16;
        } else {
            k += r;
            bits.bits(s)?;
            k += 1;
        }
    }
    Ok(Ok(()))
}

fn ac_first_block(bits: &mut Bits, ac: &Huffman, ss: usize, se: usize, eobrun: &mut u32, mask: &mut u64) -> Block {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(Ok(()));
    }
    let mut k = ss;
    while k <= se {
        let rs = match bits.symbol(ac)? {
            Ok(rs) => rs,
            Err(e) => return Ok(Err(e)),
        };
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s == 0 {
            if r < 15 {
                *eobrun = (1 << r) + bits.bits(r)? - 1;
                break;
            }
            k += 16;
        } else {
            k += r as usize;
            bits.bits(s)?;
            if k <= 63 {
                *mask |= 1 << k;
            }
            k += 1;
        }
    }
    Ok(Ok(()))
}

/// A refinement scan (libjpeg's `decode_mcu_AC_refine`): one correction bit for every
/// coefficient already non-zero that it passes, new coefficients of magnitude one.
fn ac_refine_block(bits: &mut Bits, ac: &Huffman, ss: usize, se: usize, eobrun: &mut u32, mask: &mut u64) -> Block {
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = match bits.symbol(ac)? {
                Ok(rs) => rs,
                Err(e) => return Ok(Err(e)),
            };
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            if s != 0 {
                // Only 1 is valid here; libjpeg warns and reads on, and so does this.
                bits.bits(1)?;
            } else if r != 15 {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += bits.bits(r as u32)?;
                }
                break;
            }
            while k <= se {
                if *mask & (1 << k) != 0 {
                    bits.bits(1)?;
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if s != 0 && k <= se {
                *mask |= 1 << k;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            if *mask & (1 << k) != 0 {
                bits.bits(1)?;
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
    }

    /// A noisy picture (so that blocks have many coefficients), encoded with `settings`.
    fn encoded(width: u16, height: u16, grey: bool, settings: impl Fn(&mut jpeg_encoder::Encoder<&mut Vec<u8>>)) -> Vec<u8> {
        let channels = if grey { 1 } else { 3 };
        let pixels: Vec<u8> = (0..usize::from(width) * usize::from(height) * channels).map(|i| ((i * 7919) % 251) as u8 ^ ((i / 97) as u8)).collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
        settings(&mut encoder);
        let color = if grey { jpeg_encoder::ColorType::Luma } else { jpeg_encoder::ColorType::Rgb };
        encoder.encode(&pixels, width, height, color).unwrap();
        out
    }

    /// Whole files of every kind the walker reads: baseline and progressive, with and
    /// without restart markers, subsampled or not, grey or colour, with successive
    /// approximation (the fixtures, written by libjpeg-turbo through Pillow from
    /// tests/fixtures/arithmetic.jpg's picture).
    fn whole_files() -> Vec<(String, Vec<u8>)> {
        use jpeg_encoder::SamplingFactor;
        let mut files = vec![("progressive.jpg (restart every 5 MCUs)".to_string(), fixture("progressive.jpg")), ("progressive-grey.jpg".to_string(), fixture("progressive-grey.jpg"))];
        for (name, grey, settings) in [
            ("baseline 4:2:0", false, (|_e: &mut jpeg_encoder::Encoder<&mut Vec<u8>>| {}) as fn(&mut jpeg_encoder::Encoder<&mut Vec<u8>>)),
            ("baseline 4:4:4, restart every 3 MCUs", false, |e| {
                e.set_sampling_factor(SamplingFactor::F_1_1);
                e.set_restart_interval(3);
            }),
            ("baseline 4:2:2, optimised tables", false, |e| {
                e.set_sampling_factor(SamplingFactor::F_2_1);
                e.set_optimized_huffman_tables(true);
            }),
            ("baseline grey, restart every block", true, |e| e.set_restart_interval(1)),
            ("progressive 4:2:0", false, |e| e.set_progressive(true)),
            ("progressive 4:2:0, restart every 2 MCUs", false, |e| {
                e.set_progressive(true);
                e.set_restart_interval(2);
            }),
            ("progressive grey", true, |e| e.set_progressive(true)),
        ] {
            files.push((name.to_string(), encoded(37, 29, grey, settings)));
        }
        files
    }

    #[test]
    fn whole_files_code_every_block() {
        for (name, bytes) in whole_files() {
            assert_eq!(check(&bytes), Ok(()), "{name}");
        }
    }

    /// The attack: a file cut anywhere after its first scan starts, given a new
    /// end-of-image marker, is refused wherever the cut falls: inside a scan's data (its
    /// blocks run out), between two scans of a progressive file (coefficients left
    /// incomplete), or inside a segment.
    #[test]
    fn a_file_cut_short_and_given_a_new_end_marker_is_refused_wherever_it_is_cut() {
        for (name, bytes) in whole_files() {
            let first_scan = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
            let eoi = bytes.len() - 2;
            assert_eq!(&bytes[eoi..], [0xFF, 0xD9], "{name}");
            let mut refused = 0;
            for cut in (first_scan + 2..eoi - 1).step_by(3) {
                let mut cut_file = bytes[..cut].to_vec();
                cut_file.extend_from_slice(&[0xFF, 0xD9]);
                let err = check(&cut_file).expect_err(&format!("{name} cut at {cut} of {}", bytes.len()));
                if err.contains("cut short") {
                    refused += 1;
                }
            }
            assert!(refused > 0, "{name}: no cut was called cut short");
        }
    }
}
