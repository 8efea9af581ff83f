//! The `searchDefaults` policy: caps on `k` and `efSearch`, a filter added to every search, and
//! fields every search must match on (tenant isolation). Enforced by each replica that serves a
//! search, from its own copy of the shard's policies.

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::engine::filter::Filter;
use crate::engine::filter::Predicate;

/// Conditions a mandatory filter may hold (the search's own filter keeps the rest of the
/// engine's limit).
pub const MAX_FILTER_CONDITIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchDefaults {
    /// A search asking for more hits is refused (silently returning fewer would look like a
    /// small index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_k: Option<u32>,
    /// The search's `efSearch` (or the index default, `spec.hnsw.efSearch`) is lowered to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ef_search: Option<u32>,
    /// Conditions added to every search's filter (`must` and `mustNot` only: they are ANDed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// Payload fields every search must constrain with a `must` equality (`match`) condition,
    /// e.g. `["tenant"]`: no search can read across tenants by forgetting the filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_match: Vec<String>,
}

impl SearchDefaults {
    /// Checks a policy given by a user.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_k.is_none()
            && self.max_ef_search.is_none()
            && self.filter.is_none()
            && self.require_match.is_empty()
        {
            return Err(
                "a searchDefaults policy needs maxK, maxEfSearch, filter and/or requireMatch"
                    .into(),
            );
        }
        if self.max_k == Some(0) || self.max_ef_search == Some(0) {
            return Err("searchDefaults maxK and maxEfSearch must be at least 1".into());
        }
        if self.require_match.iter().any(String::is_empty) {
            return Err("searchDefaults requireMatch lists an empty field name".into());
        }
        if let Some(f) = &self.filter {
            let f = Filter::from_json(f).map_err(|e| format!("searchDefaults {e}"))?;
            if !f.should.is_empty() {
                return Err(
                    "searchDefaults filter: only must and mustNot conditions (they are added to every search's filter; a should list would change the search's own)"
                        .into(),
                );
            }
            if f.must.len() + f.must_not.len() > MAX_FILTER_CONDITIONS {
                return Err(format!(
                    "searchDefaults filter has more than {MAX_FILTER_CONDITIONS} conditions"
                ));
            }
        }
        Ok(())
    }
}

/// All searchDefaults policies in force on a replica, combined: the smallest caps, every
/// filter, every required field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchRules {
    /// (limit, policy name, version)
    pub max_k: Option<(u32, String, u64)>,
    pub max_ef_search: Option<u32>,
    pub filter: Filter,
    /// (field, policy name)
    pub require_match: Vec<(String, String)>,
}

/// A search a searchDefaults policy refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SearchRefused(pub String);

impl SearchRules {
    /// Adds one policy (`name` at `version`). A stored filter was validated when it was put.
    pub fn add(&mut self, name: &str, version: u64, p: &SearchDefaults) {
        if let Some(k) = p.max_k
            && self.max_k.as_ref().is_none_or(|(m, ..)| k < *m)
        {
            self.max_k = Some((k, name.to_string(), version));
        }
        if let Some(ef) = p.max_ef_search {
            self.max_ef_search = Some(self.max_ef_search.map_or(ef, |m| m.min(ef)));
        }
        if let Some(f) = p.filter.as_ref().and_then(|f| Filter::from_json(f).ok()) {
            self.filter.must.extend(f.must);
            self.filter.must_not.extend(f.must_not);
        }
        for field in &p.require_match {
            self.require_match.push((field.clone(), name.to_string()));
        }
    }

    /// What a search runs with: `k` (refused above the cap), `ef` (lowered to the cap;
    /// `default_ef` is the index's when the search gives none) and its filter with the
    /// mandatory conditions added.
    pub fn apply(
        &self,
        k: usize,
        ef: Option<usize>,
        default_ef: usize,
        mut filter: Filter,
    ) -> Result<(Option<usize>, Filter), SearchRefused> {
        if let Some((max, name, version)) = &self.max_k
            && k > *max as usize
        {
            return Err(SearchRefused(format!(
                "searchDefaults policy {name:?} (version {version}) allows k up to {max}; the search asked for {k}"
            )));
        }
        for (field, name) in &self.require_match {
            let constrained = filter
                .must
                .iter()
                .any(|c| &c.field == field && matches!(c.predicate, Predicate::Match(_)));
            if !constrained {
                return Err(SearchRefused(format!(
                    "searchDefaults policy {name:?} requires every search to filter on payload field {field:?}: add {{\"must\":[{{\"field\":{field:?},\"match\":...}}]}}"
                )));
            }
        }
        let ef = match self.max_ef_search {
            Some(max) => Some(ef.unwrap_or(default_ef).min(max as usize)),
            None => ef,
        };
        filter.must.extend(self.filter.must.iter().cloned());
        filter.must_not.extend(self.filter.must_not.iter().cloned());
        Ok((ef, filter))
    }

    pub fn is_empty(&self) -> bool {
        *self == SearchRules::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(json: &str) -> SearchDefaults {
        serde_json::from_str(json).unwrap()
    }

    fn filter(json: &str) -> Filter {
        Filter::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn caps_combine_to_the_smallest_and_k_over_the_cap_is_refused() {
        let mut r = SearchRules::default();
        r.add("a", 1, &defaults(r#"{"maxK":50,"maxEfSearch":200}"#));
        r.add("b", 4, &defaults(r#"{"maxK":20,"maxEfSearch":300}"#));
        let (ef, _) = r.apply(20, Some(500), 64, Filter::default()).unwrap();
        assert_eq!(ef, Some(200));
        // The index default is capped too; below the cap nothing changes.
        assert_eq!(
            r.apply(5, None, 400, Filter::default()).unwrap().0,
            Some(200)
        );
        assert_eq!(
            r.apply(5, Some(80), 400, Filter::default()).unwrap().0,
            Some(80)
        );
        let e = r.apply(21, None, 64, Filter::default()).unwrap_err();
        assert!(
            e.0.contains("\"b\"") && e.0.contains("version 4") && e.0.contains("up to 20"),
            "{e}"
        );
    }

    #[test]
    fn the_mandatory_filter_is_anded_and_required_fields_are_enforced() {
        let p = defaults(
            r#"{"filter":{"mustNot":[{"field":"hidden","match":true}]},"requireMatch":["tenant"]}"#,
        );
        p.validate().unwrap();
        let mut r = SearchRules::default();
        r.add("iso", 2, &p);
        let e = r.apply(5, None, 64, Filter::default()).unwrap_err();
        assert!(e.0.contains("\"tenant\"") && e.0.contains("\"iso\""), "{e}");
        // A range on the field is not an equality: still refused.
        let e = r
            .apply(
                5,
                None,
                64,
                filter(r#"{"must":[{"field":"tenant","range":{"gt":1}}]}"#),
            )
            .unwrap_err();
        assert!(e.0.contains("tenant"), "{e}");
        let (_, f) = r
            .apply(
                5,
                None,
                64,
                filter(r#"{"must":[{"field":"tenant","match":"acme"}]}"#),
            )
            .unwrap();
        assert_eq!(f.must.len(), 1);
        assert_eq!(f.must_not.len(), 1);
        assert_eq!(f.must_not[0].field, "hidden");
    }

    #[test]
    fn policies_that_would_be_ignored_or_widen_searches_are_refused() {
        assert!(defaults("{}").validate().is_err());
        assert!(defaults(r#"{"maxK":0}"#).validate().is_err());
        let e = defaults(r#"{"filter":{"should":[{"field":"a","match":1}]}}"#)
            .validate()
            .unwrap_err();
        assert!(e.contains("should"), "{e}");
        let e = defaults(r#"{"filter":{"must":[{"field":"a","mach":1}]}}"#)
            .validate()
            .unwrap_err();
        assert!(e.contains("mach"), "{e}");
        assert!(serde_json::from_str::<SearchDefaults>(r#"{"maxKk":3}"#).is_err());
    }
}
