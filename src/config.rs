//! All settings in one place: [`Config`] (the defaults are documented on each field of
//! the parts), the one check of them all ([`Config::validate`], which every constructor
//! calls), and [`Choice`], the named values of the settings enums. A library user builds
//! a `Config` directly or deserialises it (TOML, JSON); the CLI layers its flags over it.
//! It owns no behaviour: what a setting does lives in the part it configures.

use serde::{Deserialize, Serialize};

use crate::detect::{Booster, Class, DetectConfig, RuntimeConfig};
use crate::image_io::ImageConfig;
use crate::redact::{RedactConfig, Style};

/// Everything an [`Anonymizer`](crate::Anonymizer) needs to know.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub detect: DetectConfig,
    pub redact: RedactConfig,
    pub image: ImageConfig,
    /// Most `anonymize_async` calls running at once; 0 = the detector's session count.
    pub max_concurrency: usize,
}

/// A setting that cannot work, named by its path in [`Config`] (as in a TOML file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid setting {field}: {reason}")]
pub struct ConfigError {
    /// Where the setting lives, e.g. `detect.threshold`.
    pub field: &'static str,
    pub reason: String,
}

impl Config {
    /// Checks every setting, so that a mistake is reported before any model is loaded
    /// and never silently weakens redaction. [`Anonymizer::new`](crate::Anonymizer::new)
    /// and every other constructor call it.
    ///
    /// ```
    /// let mut config = obscura::Config::default();
    /// assert!(config.validate().is_ok());
    /// config.detect.threshold = 1.5;
    /// assert_eq!(config.validate().unwrap_err().field, "detect.threshold");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: &str| Err(ConfigError { field, reason: reason.into() });
        let unit = |field: &'static str, v: f32| if (0.0..=1.0).contains(&v) { Ok(()) } else { bad(field, "must be between 0 and 1") };
        let d = &self.detect;
        unit("detect.threshold", d.threshold)?;
        unit("detect.crowd.threshold", d.crowd.threshold)?;
        unit("detect.crowd.support", d.crowd.support)?;
        if d.crowd.supporters == 0 {
            return bad("detect.crowd.supporters", "must be at least 1");
        }
        if !(d.crowd.scale.is_finite() && d.crowd.scale >= 1.0) {
            return bad("detect.crowd.scale", "must be at least 1");
        }
        unit("detect.nms_iou", d.nms_iou)?;
        unit("detect.person.threshold", d.person.threshold)?;
        unit("detect.person.nms_iou", d.person.nms_iou)?;
        unit("detect.retinaface.threshold", d.retinaface.threshold)?;
        let t = &d.text;
        unit("detect.text.threshold", t.threshold)?;
        // Near 0 the background joins the text kernels into regions whose mean score falls
        // under the threshold, and all text is dropped: a setting that silently finds nothing.
        if !(0.1..=0.9).contains(&t.pixel_threshold) {
            return bad("detect.text.pixel_threshold", "must be between 0.1 and 0.9");
        }
        // Below 1 the boxes no longer reach the letters' edges (an attack review measured
        // 81 % of the ink covered at 0).
        if !(t.unclip.is_finite() && (1.0..=10.0).contains(&t.unclip)) {
            return bad("detect.text.unclip", "must be between 1 and 10");
        }
        // A cap, so that a typo cannot switch the text target off: lines 32 px high are
        // readable by anyone.
        if !(t.min_height.is_finite() && (0.0..=32.0).contains(&t.min_height)) {
            return bad("detect.text.min_height", "must be between 0 and 32");
        }
        if t.max_side < 64 || t.tile < 64 {
            return bad("detect.text", "max_side and tile must be at least 64");
        }
        if t.coarse_sides.iter().any(|&s| s < 64) {
            return bad("detect.text.coarse_sides", "each must be at least 64");
        }
        if t.tile_overlap >= t.tile {
            return bad("detect.text.tile_overlap", "must be smaller than detect.text.tile");
        }
        if d.max_side < 64 {
            return bad("detect.max_side", "must be at least 64");
        }
        if d.tile < 64 {
            return bad("detect.tile", "must be at least 64");
        }
        if d.tile_overlap >= d.tile {
            return bad("detect.tile_overlap", "must be smaller than detect.tile");
        }
        if d.targets.is_empty() {
            return bad("detect.targets", "is empty: nothing would be detected, so nothing would be redacted");
        }
        if d.targets.contains(&Class::Face) && d.face_models.is_empty() {
            // Persons alone would leave faces to chance.
            return bad("detect.face_models", "is empty although faces are a target");
        }
        if d.boost.contains(&Booster::PersonFaces) && !d.targets.contains(&Class::Person) {
            return bad("detect.boost", "the person-faces booster needs persons among the targets");
        }
        let r = &self.redact;
        check_style("redact.style", &r.style)?;
        if let Some(style) = &r.person_style {
            check_style("redact.person_style", style)?;
        }
        check_style("redact.text_style", &r.text_style)?;
        let fraction = |field: &'static str, v: f32| if v.is_finite() && (0.0..=10.0).contains(&v) { Ok(()) } else { bad(field, "must be between 0 and 10") };
        fraction("redact.padding", r.padding)?;
        fraction("redact.person_padding", r.person_padding)?;
        fraction("redact.text_padding", r.text_padding)?;
        unit("redact.feather", r.feather)?;
        if !(r.noise.is_finite() && (0.0..=255.0).contains(&r.noise)) {
            return bad("redact.noise", "must be between 0 and 255");
        }
        let i = &self.image;
        if !(1..=100).contains(&i.jpeg_quality) {
            return bad("image.jpeg_quality", "must be between 1 and 100");
        }
        if i.max_dimension == 0 || i.max_pixels == 0 || i.max_alloc_bytes == 0 {
            return bad("image", "max_dimension, max_pixels and max_alloc_bytes must be above 0");
        }
        Ok(())
    }
}

fn check_style(field: &'static str, style: &Style) -> Result<(), ConfigError> {
    let reason = match *style {
        Style::Pixelate { cells } if !(1..=64).contains(&cells) => "pixelate cells must be between 1 and 64",
        Style::Blur { sigma } if !(sigma.is_finite() && sigma > 0.0 && sigma <= 4.0) => "blur sigma must be above 0 and at most 4",
        _ => return Ok(()),
    };
    Err(ConfigError { field, reason: reason.into() })
}

/// A setting with a fixed set of named values (`face`, `centerface-int8`, `pixelate`…):
/// the names are the enum's serde names, so a TOML file, the CLI, a query string and
/// Python all spell them the same way, and front ends list and parse them from here.
///
/// ```
/// use obscura::config::Choice;
/// use obscura::detect::FaceModel;
/// assert_eq!(FaceModel::CenterfaceInt8.name(), "centerface-int8");
/// assert_eq!(FaceModel::from_name("retinaface"), Some(FaceModel::Retinaface));
/// assert!(FaceModel::ALL.contains(&FaceModel::Centerface));
/// ```
pub trait Choice: sealed::Sealed + Copy + PartialEq + Serialize + serde::de::DeserializeOwned + 'static {
    /// Every value, in the order front ends list them.
    const ALL: &'static [Self];

    /// The value's name.
    fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => name,
            other => unreachable!("a Choice serialises as a string, not {other:?}"),
        }
    }

    /// The value with this name.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

/// Only this crate's enums are [`Choice`]s (their names are serde strings by construction).
mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::detect::Class {}
    impl Sealed for crate::detect::FaceModel {}
    impl Sealed for crate::detect::Booster {}
    impl Sealed for crate::detect::Device {}
    impl Sealed for crate::redact::Shape {}
    impl Sealed for crate::redact::backend::RedactOn {}
}

#[cfg(test)]
mod tests {
    use super::Choice;
    use crate::detect::{Booster, Class, Device, FaceModel};
    use crate::redact::Shape;
    use crate::redact::backend::RedactOn;

    /// Every listed value round-trips through its name and through serde, and no two share a name.
    fn names_are_serde_names<T: Choice + std::fmt::Debug>() {
        let names: Vec<String> = T::ALL.iter().map(|v| v.name()).collect();
        for (v, name) in T::ALL.iter().zip(&names) {
            assert_eq!(T::from_name(name), Some(*v));
            let parsed: T = serde_json::from_value(serde_json::Value::String(name.clone())).unwrap();
            assert_eq!(parsed, *v);
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(T::from_name("no-such-value"), None);
    }

    #[test]
    fn every_choice_lists_its_values_by_their_serde_names() {
        names_are_serde_names::<Class>();
        names_are_serde_names::<FaceModel>();
        names_are_serde_names::<Booster>();
        names_are_serde_names::<Device>();
        names_are_serde_names::<RedactOn>();
        names_are_serde_names::<Shape>();
        assert_eq!(Booster::PersonFaces.name(), "person-faces");
    }

    /// `ALL` lists every value: a new variant makes these exhaustive matches fail to
    /// compile until it is given a place here, and then the test until `ALL` has it too.
    #[test]
    fn every_choice_lists_every_variant() {
        fn check<T: Choice + std::fmt::Debug>(position: impl Fn(T) -> usize, count: usize) {
            assert_eq!(T::ALL.len(), count, "{:?}", T::ALL);
            for (i, v) in T::ALL.iter().enumerate() {
                assert_eq!(position(*v), i, "{v:?}");
            }
        }
        check(|v: Class| match v { Class::Face => 0, Class::Person => 1, Class::Text => 2 }, 3);
        check(|v: FaceModel| match v { FaceModel::CenterfaceInt8 => 0, FaceModel::Centerface => 1, FaceModel::Retinaface => 2 }, 3);
        check(|v: Booster| match v { Booster::PersonFaces => 0, Booster::Flip => 1, Booster::Upscale => 2 }, 3);
        check(|v: Device| match v { Device::Auto => 0, Device::Cpu => 1, Device::Cuda => 2 }, 3);
        check(|v: RedactOn| match v { RedactOn::Auto => 0, RedactOn::Cpu => 1, RedactOn::Gpu => 2 }, 3);
        check(|v: Shape| match v { Shape::Rect => 0, Shape::Ellipse => 1 }, 2);
    }
}
