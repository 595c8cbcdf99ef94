//! Crowd confirmation: which low-score face candidates are kept. A face the model scores
//! at least `detect.threshold` is kept on its own; one that scores lower (down to
//! [`CrowdConfig::threshold`]) is kept only when the photo holds at least
//! [`CrowdConfig::supporters`] other faces that score at least [`CrowdConfig::support`]
//! and are of a similar size (heights within [`CrowdConfig::scale`]× of its own).
//!
//! Why: in a crowd the small, blurred, turned faces score low, and a threshold low enough
//! to keep them also keeps patterns on photos without people (boards, grids, foliage).
//! Faces come in groups of similar size; patterns that fool the model rarely come with
//! two confident faces beside them. On `../shared/eval` this keeps coverage of all faces
//! at 0.91 where a plain threshold needs 119 false regions for 0.86 (measured in
//! `benches/RESULTS.md`, "Crowd confirmation", tuned on one half and checked on the other).
//!
//! It owns the rule only: which model's candidates it applies to, and where, is the
//! detector's (CenterFace runs it over the candidates of every view of a photo, merged).

use serde::{Deserialize, Serialize};

use super::Detection;

/// Settings of the crowd confirmation (`detect.crowd`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrowdConfig {
    /// Lowest score of a face kept when it is confirmed (default 0.05). At or above
    /// `detect.threshold`, nothing below that threshold is kept: the rule is off.
    pub threshold: f32,
    /// Score a face needs to confirm others (default 0.4).
    pub support: f32,
    /// How many confirming faces a low-score face needs (default 2): one confident
    /// false detection on a pattern cannot vouch for the rest of the pattern.
    pub supporters: u32,
    /// How different in height a confirming face may be, as a ratio (default 3: from a
    /// third to three times the candidate's height).
    pub scale: f32,
}

impl Default for CrowdConfig {
    fn default() -> Self {
        Self { threshold: 0.05, support: 0.4, supporters: 2, scale: 3.0 }
    }
}

impl CrowdConfig {
    /// The lowest score a detector must report for this rule to see every candidate it
    /// may keep, given the plain `threshold`.
    pub fn floor(&self, threshold: f32) -> f32 {
        self.threshold.min(threshold)
    }
}

/// The candidates kept: those scoring at least `threshold`, and those scoring at least
/// `crowd.threshold` that enough other confident faces of a similar size confirm.
///
/// ```
/// use obscura::detect::crowd::{CrowdConfig, confirm};
/// use obscura::detect::{Class, Detection};
/// use obscura::geometry::{BBox, Score};
/// let face = |x: f32, h: f32, score: f32| Detection {
///     class: Class::Face, bbox: BBox::from_xywh(x, 0.0, h, h), score: Score(score), landmarks: None, model: "centerface".into(),
/// };
/// let crowd = CrowdConfig::default();
/// // One weak candidate alone is dropped; beside two confident faces it is kept.
/// assert!(confirm(vec![face(0.0, 20.0, 0.1)], 0.3, &crowd).is_empty());
/// let kept = confirm(vec![face(0.0, 20.0, 0.1), face(50.0, 24.0, 0.9), face(90.0, 18.0, 0.5)], 0.3, &crowd);
/// assert_eq!(kept.len(), 3);
/// ```
pub fn confirm(candidates: Vec<Detection>, threshold: f32, crowd: &CrowdConfig) -> Vec<Detection> {
    let height = |d: &Detection| d.bbox.height();
    let supporters: Vec<f32> = candidates.iter().filter(|d| d.score.0 >= crowd.support).map(height).collect();
    let confirmed = |d: &Detection| {
        let h = height(d);
        let similar = supporters.iter().filter(|&&s| h > 0.0 && s > 0.0 && h / s <= crowd.scale && s / h <= crowd.scale).count();
        // A candidate that is itself a supporter does not count for itself.
        let own = usize::from(d.score.0 >= crowd.support && h > 0.0);
        similar.saturating_sub(own) >= crowd.supporters as usize
    };
    candidates.into_iter().filter(|d| d.score.0 >= threshold || (d.score.0 >= crowd.threshold && confirmed(d))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Class;
    use crate::geometry::{BBox, Score};

    fn face(x: f32, h: f32, score: f32) -> Detection {
        Detection { class: Class::Face, bbox: BBox::from_xywh(x, 0.0, h * 0.8, h), score: Score(score), landmarks: None, model: "centerface".into() }
    }

    fn scores(kept: &[Detection]) -> Vec<f32> {
        kept.iter().map(|d| d.score.0).collect()
    }

    #[test]
    fn confident_faces_are_kept_whatever_their_neighbours() {
        let kept = confirm(vec![face(0.0, 20.0, 0.3), face(40.0, 200.0, 0.95)], 0.3, &CrowdConfig::default());
        assert_eq!(scores(&kept), [0.3, 0.95]);
    }

    #[test]
    fn a_weak_face_needs_two_confident_faces_of_a_similar_size() {
        let c = CrowdConfig::default();
        let weak = face(0.0, 20.0, 0.1);
        // One supporter is not enough (a single confident false detection on a pattern).
        assert_eq!(scores(&confirm(vec![weak.clone(), face(30.0, 20.0, 0.9)], 0.3, &c)), [0.9]);
        // Two are, within 3× in height either way.
        let kept = confirm(vec![weak.clone(), face(30.0, 60.0, 0.9), face(90.0, 7.0, 0.45)], 0.3, &c);
        assert_eq!(scores(&kept), [0.1, 0.9, 0.45]);
        // Beyond 3×, they are not alike.
        let kept = confirm(vec![weak.clone(), face(30.0, 61.0, 0.9), face(90.0, 6.0, 0.45)], 0.3, &c);
        assert_eq!(scores(&kept), [0.9, 0.45]);
        // Supporters must score at least `support`.
        let kept = confirm(vec![weak, face(30.0, 20.0, 0.39), face(60.0, 20.0, 0.39)], 0.3, &c);
        assert_eq!(scores(&kept), [0.39, 0.39]);
    }

    #[test]
    fn below_the_crowd_threshold_nothing_is_kept_and_a_crowd_threshold_at_the_threshold_turns_it_off() {
        let crowd = vec![face(0.0, 20.0, 0.04), face(30.0, 20.0, 0.2), face(60.0, 20.0, 0.9), face(90.0, 20.0, 0.8)];
        assert_eq!(scores(&confirm(crowd.clone(), 0.3, &CrowdConfig::default())), [0.2, 0.9, 0.8]);
        let off = CrowdConfig { threshold: 0.3, ..CrowdConfig::default() };
        assert_eq!(scores(&confirm(crowd, 0.3, &off)), [0.9, 0.8]);
        assert_eq!(off.floor(0.3), 0.3);
        assert_eq!(CrowdConfig::default().floor(0.3), 0.05);
    }

    #[test]
    fn a_supporter_does_not_confirm_itself() {
        // Two faces between support and threshold: each is confirmed only by the other,
        // and one other is fewer than the two needed.
        let c = CrowdConfig { support: 0.2, ..CrowdConfig::default() };
        assert!(confirm(vec![face(0.0, 20.0, 0.25), face(30.0, 20.0, 0.25)], 0.3, &c).is_empty());
        let three = vec![face(0.0, 20.0, 0.25), face(30.0, 20.0, 0.25), face(60.0, 20.0, 0.25)];
        assert_eq!(confirm(three, 0.3, &c).len(), 3);
    }
}
