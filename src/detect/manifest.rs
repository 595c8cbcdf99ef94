//! The model manifest, `models/models.toml`, compiled in: each model's name in reports,
//! file name and pinned sha256. It owns no loading (that is [`load_model`](super::load_model))
//! and no list of detectors (that is [`registry`](super::registry)).

use std::sync::LazyLock;

const MANIFEST: &str = include_str!("../../models/models.toml");

/// One model of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelEntry {
    /// The table's ID (`centerface-int8`).
    pub id: String,
    /// The name reports and detections carry (`retinaface-mnet0.25`).
    pub name: String,
    /// File name in `models/`.
    pub file: String,
    pub sha256: String,
}

static ENTRIES: LazyLock<Vec<ModelEntry>> = LazyLock::new(|| parse(MANIFEST).expect("models/models.toml is valid (checked by the unit tests)"));

/// The manifest entry `id`. Panics on an unknown ID: IDs are written in the registry,
/// and a unit test checks that each has an entry.
pub(crate) fn entry(id: &str) -> &'static ModelEntry {
    ENTRIES.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("models/models.toml has no [model.{id}]"))
}

/// Reads the manifest's TOML subset: `[model.ID]` tables of `key = "string"` lines,
/// comments and blank lines.
fn parse(text: &str) -> Result<Vec<ModelEntry>, String> {
    let mut entries = Vec::new();
    let mut current: Option<(String, Vec<(String, String)>)> = None;
    let finish = |table: Option<(String, Vec<(String, String)>)>, entries: &mut Vec<ModelEntry>| -> Result<(), String> {
        let Some((id, fields)) = table else { return Ok(()) };
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).ok_or(format!("[model.{id}] has no {k}"));
        let entry = ModelEntry { id: id.clone(), name: get("name")?, file: get("file")?, sha256: get("sha256")? };
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("[model.{id}] sha256 is not 64 lowercase hex digits"));
        }
        entries.push(entry);
        Ok(())
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = line.split('#').next().unwrap_or_default().trim_end();
        if let Some(id) = header.strip_prefix("[model.").and_then(|l| l.strip_suffix(']')) {
            finish(current.take(), &mut entries)?;
            current = Some((id.to_string(), Vec::new()));
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(format!("line {}: expected key = \"value\"", n + 1))?;
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.split_once('"')).map(|(v, rest)| (v, rest.trim()));
        let Some((value, "")) = value.map(|(v, rest)| (v, if rest.starts_with('#') { "" } else { rest })) else {
            return Err(format!("line {}: the value must be one \"string\"", n + 1));
        };
        let Some((_, fields)) = current.as_mut() else { return Err(format!("line {}: outside a [model.ID] table", n + 1)) };
        fields.push((key.trim().to_string(), value.to_string()));
    }
    finish(current.take(), &mut entries)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_and_names_each_file_once() {
        let entries = parse(MANIFEST).unwrap();
        assert!(entries.len() >= 4);
        let mut files: Vec<&str> = entries.iter().map(|e| e.file.as_str()).collect();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), entries.len());
        assert_eq!(entry("centerface-int8").file, "centerface-int8.onnx");
    }

    /// The subset is real TOML: a full parser reads the same values.
    #[cfg(feature = "retention")]
    #[test]
    fn the_manifest_is_toml() {
        let table: toml::Table = toml::from_str(MANIFEST).unwrap();
        for e in parse(MANIFEST).unwrap() {
            let t = &table["model"][e.id.as_str()];
            assert_eq!(t["name"].as_str(), Some(e.name.as_str()));
            assert_eq!(t["file"].as_str(), Some(e.file.as_str()));
            assert_eq!(t["sha256"].as_str(), Some(e.sha256.as_str()));
        }
    }

    /// `scripts/setup` reads the manifest with its own small reader (awk): on the real
    /// file and on a variant with CRLF line ends, no spaces around `=` and comments, it
    /// finds what the Rust reader finds.
    #[test]
    fn the_setup_script_reads_the_manifest_as_the_loader_does() {
        let setup = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup")).unwrap();
        let start = setup.find("model_field() {").expect("scripts/setup defines model_field");
        let end = start + setup[start..].find("\n}\n").expect("model_field ends") + 3;
        let function = &setup[start..end];
        let variant = MANIFEST.replace(" = ", "=").replace('\n', " # note\r\n").replace("]\r\n", "]  \r\n");
        for text in [MANIFEST.to_string(), variant] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("models")).unwrap();
            std::fs::write(root.path().join("models/models.toml"), &text).unwrap();
            for e in parse(&text).unwrap() {
                for (key, value) in [("name", &e.name), ("file", &e.file), ("sha256", &e.sha256)] {
                    let out = std::process::Command::new("bash")
                        .arg("-c")
                        .arg(format!("{function}\nmodel_field \"$1\" \"$2\""))
                        .args(["model_field", &e.id, key])
                        .env("ROOT", root.path())
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}: {}", e.id, String::from_utf8_lossy(&out.stderr));
                    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), value.as_str(), "[model.{}] {key}", e.id);
                }
            }
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse("name = \"x\"").is_err(), "outside a table");
        assert!(parse("[model.a]\nname = x").is_err(), "unquoted");
        assert!(parse("[model.a]\nname = \"a\"\nfile = \"a.onnx\"").is_err(), "no sha256");
        assert!(parse("[model.a]\nname = \"a\"\nfile = \"a\"\nsha256 = \"XYZ\"").is_err());
        let ok = format!("[model.a]\nname = \"a\" # comment\nfile = \"a\"\nsha256 = \"{}\"", "0".repeat(64));
        assert_eq!(parse(&ok).unwrap()[0].name, "a");
    }
}
