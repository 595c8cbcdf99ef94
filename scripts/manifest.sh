# Sourced by scripts/setup, scripts/build-wheel and scripts/gpu-check: the shell's reader
# of models/models.toml, the one place model files, the ONNX Runtime release and their
# checksums are written (the Rust loader compiles the same file in; a unit test in
# src/detect/manifest.rs checks that this reader and the Rust one agree). Needs ROOT.

# manifest_field TABLE KEY: the value of KEY in [TABLE] (`model.centerface file`).
manifest_field() {
  awk -v table="[$1]" -v key="$2" '
    { line = $0; sub(/\r$/, "", line); sub(/[ \t]+$/, "", line) }
    line ~ /^[ \t]*\[/ { t = line; sub(/^[ \t]+/, "", t); sub(/[ \t]*#.*$/, "", t); inside = (t == table); next }
    inside && line ~ ("^[ \t]*" key "[ \t]*=") {
      if (match(line, /"[^"]*"/)) { print substr(line, RSTART + 1, RLENGTH - 2); found = 1; exit }
    }
    END { if (!found) exit 1 }
  ' "$ROOT/models/models.toml" || { echo "models/models.toml: no $2 in [$1]" >&2; exit 2; }
}

# manifest_models: the ID of every [model.ID] table, one per line.
manifest_models() {
  awk '{ sub(/\r$/, "") } /^[ \t]*\[model\.[^]]*\]/ { t = $0; sub(/^[ \t]*\[model\./, "", t); sub(/\].*$/, "", t); print t }' "$ROOT/models/models.toml"
}
