//! The model manifest, `models/models.toml`, compiled in: each model's name in reports,
//! file name and pinned sha256, and the ONNX Runtime release they run with
//! ([`runtime_pin`]). It owns no loading (that is [`load_model`](super::load_model)) and
//! no list of detectors (that is [`registry`](super::registry)).

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

/// The ONNX Runtime release the models are run with: `[runtime.onnxruntime]`, the pin
/// `scripts/setup` installs and the Python package depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePin {
    /// The `onnxruntime` package version (`1.32.0`).
    pub version: String,
    /// The library's file name in that package (`libonnxruntime.so.1.32.0`).
    pub library: String,
    /// sha256 of the Linux x86-64 wheel `scripts/setup` downloads.
    pub wheel_sha256: String,
    /// sha256 of the library inside it.
    pub library_sha256: String,
}

struct Manifest {
    models: Vec<ModelEntry>,
    runtime: RuntimePin,
}

static MANIFEST_PARSED: LazyLock<Manifest> = LazyLock::new(|| parse(MANIFEST).expect("models/models.toml is valid (checked by the unit tests)"));

/// The manifest entry `id`. Panics on an unknown ID: IDs are written in the registry,
/// and a unit test checks that each has an entry.
pub(crate) fn entry(id: &str) -> &'static ModelEntry {
    MANIFEST_PARSED.models.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("models/models.toml has no [model.{id}]"))
}

/// The ONNX Runtime release the manifest pins.
///
/// ```
/// assert!(obscura::detect::runtime_pin().library.ends_with(&obscura::detect::runtime_pin().version));
/// ```
pub fn runtime_pin() -> &'static RuntimePin {
    &MANIFEST_PARSED.runtime
}

type Table = (String, Vec<(String, String)>);

/// Reads the manifest's TOML subset: `[model.ID]` tables and one `[runtime.onnxruntime]`
/// table, of `key = "string"` lines, comments and blank lines.
fn parse(text: &str) -> Result<Manifest, String> {
    let mut tables: Vec<Table> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = line.split('#').next().unwrap_or_default().trim_end();
        if let Some(name) = header.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            tables.push((name.to_string(), Vec::new()));
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(format!("line {}: expected key = \"value\"", n + 1))?;
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.split_once('"')).map(|(v, rest)| (v, rest.trim()));
        let Some((value, "")) = value.map(|(v, rest)| (v, if rest.starts_with('#') { "" } else { rest })) else {
            return Err(format!("line {}: the value must be one \"string\"", n + 1));
        };
        let Some((_, fields)) = tables.last_mut() else { return Err(format!("line {}: outside a table", n + 1)) };
        fields.push((key.trim().to_string(), value.to_string()));
    }
    let sha = |table: &str, key: &str, v: String| {
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(v)
        } else {
            Err(format!("[{table}] {key} is not 64 lowercase hex digits"))
        }
    };
    let mut models = Vec::new();
    let mut runtime = None;
    for (table, fields) in tables {
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).ok_or(format!("[{table}] has no {k}"));
        if let Some(id) = table.strip_prefix("model.") {
            models.push(ModelEntry { id: id.to_string(), name: get("name")?, file: get("file")?, sha256: sha(&table, "sha256", get("sha256")?)? });
        } else if table == "runtime.onnxruntime" && runtime.is_none() {
            runtime = Some(RuntimePin {
                version: get("version")?,
                library: get("library")?,
                wheel_sha256: sha(&table, "wheel_sha256", get("wheel_sha256")?)?,
                library_sha256: sha(&table, "library_sha256", get("library_sha256")?)?,
            });
        } else {
            return Err(format!("[{table}]: only [model.ID] tables and one [runtime.onnxruntime] are expected"));
        }
    }
    Ok(Manifest { models, runtime: runtime.ok_or("no [runtime.onnxruntime] table")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_and_names_each_file_once() {
        let entries = parse(MANIFEST).unwrap().models;
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
        let m = parse(MANIFEST).unwrap();
        let rt = &table["runtime"]["onnxruntime"];
        assert_eq!(rt["version"].as_str(), Some(m.runtime.version.as_str()));
        assert_eq!(rt["library_sha256"].as_str(), Some(m.runtime.library_sha256.as_str()));
        for e in m.models {
            let t = &table["model"][e.id.as_str()];
            assert_eq!(t["name"].as_str(), Some(e.name.as_str()));
            assert_eq!(t["file"].as_str(), Some(e.file.as_str()));
            assert_eq!(t["sha256"].as_str(), Some(e.sha256.as_str()));
        }
    }

    /// The scripts read the manifest with their own small reader (awk, in
    /// `scripts/manifest.sh`): on the real file and on a variant with CRLF line ends, no
    /// spaces around `=` and comments, it finds what the Rust reader finds.
    #[test]
    fn the_scripts_read_the_manifest_as_the_loader_does() {
        let reader = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/manifest.sh");
        let variant = MANIFEST.replace(" = ", "=").replace('\n', " # note\r\n").replace("]\r\n", "]  \r\n");
        for text in [MANIFEST.to_string(), variant] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("models")).unwrap();
            std::fs::write(root.path().join("models/models.toml"), &text).unwrap();
            let m = parse(&text).unwrap();
            let mut expected: Vec<(String, &str, &str)> = Vec::new();
            for e in &m.models {
                for (key, value) in [("name", &e.name), ("file", &e.file), ("sha256", &e.sha256)] {
                    expected.push((format!("model.{}", e.id), key, value));
                }
            }
            let ids = std::process::Command::new("bash").arg("-c").arg(format!(". {reader}\nmanifest_models")).env("ROOT", root.path()).output().unwrap();
            assert!(ids.status.success(), "{}", String::from_utf8_lossy(&ids.stderr));
            let listed: Vec<String> = String::from_utf8_lossy(&ids.stdout).lines().map(str::to_string).collect();
            assert_eq!(listed, m.models.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
            let rt = &m.runtime;
            for (key, value) in [("version", &rt.version), ("library", &rt.library), ("wheel_sha256", &rt.wheel_sha256), ("library_sha256", &rt.library_sha256)] {
                expected.push(("runtime.onnxruntime".into(), key, value));
            }
            for (table, key, value) in expected {
                let out = std::process::Command::new("bash")
                    .arg("-c")
                    .arg(format!(". {reader}\nmanifest_field \"$1\" \"$2\""))
                    .args(["manifest_field", &table, key])
                    .env("ROOT", root.path())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{table}: {}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), value, "[{table}] {key}");
            }
        }
    }

    /// The library name the loader looks for is the one the manifest pins.
    #[test]
    fn the_loader_looks_for_the_pinned_library() {
        assert_eq!(runtime_pin().library, crate::detect::runtime::ORT_LIBRARY_NAME);
        assert_eq!(runtime_pin().library, format!("libonnxruntime.so.{}", runtime_pin().version));
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse("name = \"x\"").is_err(), "outside a table");
        assert!(parse("[model.a]\nname = x").is_err(), "unquoted");
        assert!(parse("[model.a]\nname = \"a\"\nfile = \"a.onnx\"").is_err(), "no sha256");
        assert!(parse("[model.a]\nname = \"a\"\nfile = \"a\"\nsha256 = \"XYZ\"").is_err());
        let z = "0".repeat(64);
        let runtime = format!("[runtime.onnxruntime]\nversion = \"1\"\nlibrary = \"l\"\nwheel_sha256 = \"{z}\"\nlibrary_sha256 = \"{z}\"\n");
        let ok = format!("{runtime}[model.a]\nname = \"a\" # comment\nfile = \"a\"\nsha256 = \"{z}\"");
        assert_eq!(parse(&ok).unwrap().models[0].name, "a");
        assert!(parse(&format!("[model.a]\nname = \"a\"\nfile = \"a\"\nsha256 = \"{z}\"")).is_err(), "no runtime");
        assert!(parse(&format!("{runtime}[other]\nx = \"1\"")).is_err(), "unknown table");
    }
}
