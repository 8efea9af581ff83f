//! Released node builds the operator still runs, and what each can do: the pod template
//! for an older release leaves out what it does not know (flags, ports), a spec that needs
//! more than the release has is refused, and so is a rollback to a release that cannot read
//! the data the index's volumes already hold. Pure; unit-tested.
//!
//! An image is mapped to a release by its tag (`kindex/kindex-node:v0.1.0` or `:0.1.0`,
//! digest ignored). The operator's own default image is this build, whatever its tag says,
//! and so is a tag that is exactly this build's version (`CARGO_PKG_VERSION`, as the chart
//! tags images): while the workspace still carries the version of the last release
//! (0.1.0), only `:v0.1.0` names that release. Any tag not in [`RELEASES`] (a newer
//! release, `latest`, a branch build) is treated as this build too: the table lists only
//! releases that lack something.

/// What one older release of `kindex-node` can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// `major.minor.patch`.
    pub version: (u64, u64, u64),
    /// The newest data format (snapshot format numbers, see the node's `Status.data_format`)
    /// it reads: its own snapshots and log entries.
    pub reads_data_format: u32,
    /// Whether it has the admin port (`--admin-port`); older builds serve Admin on the data
    /// port.
    pub admin_port: bool,
    /// Peer mTLS (`--peer-tls-dir`), API keys (`--api-keys-file`), quantization,
    /// `--vectors-on-disk`.
    pub peer_tls: bool,
    pub api_keys: bool,
    pub quantization: bool,
    pub vectors_on_disk: bool,
}

impl Release {
    pub fn name(&self) -> String {
        let (a, b, c) = self.version;
        format!("v{a}.{b}.{c}")
    }
}

/// Releases older than this build, newest last.
pub const RELEASES: &[Release] = &[Release {
    version: (0, 1, 0),
    reads_data_format: 2,
    admin_port: false,
    peer_tls: false,
    api_keys: false,
    quantization: false,
    vectors_on_disk: false,
}];

/// The older release `image` runs, or `None` for this build (the default image, or a tag
/// that names no listed release).
pub fn of(image: &str, default_image: &str) -> Option<&'static Release> {
    let tag = tag(image)?;
    if image == default_image || tag == env!("CARGO_PKG_VERSION") {
        return None;
    }
    let version = parse_tag(tag)?;
    RELEASES.iter().find(|r| r.version == version)
}

/// The tag of `repo[:tag][@digest]`, if any (a `:` after the last `/` is a tag, before it a
/// registry port).
fn tag(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split_once(':').map(|(_, t)| t)
}

/// `v1.2.3`, `1.2.3`, with an optional `-pre` or `+build` suffix, as `(1, 2, 3)`.
fn parse_tag(tag: &str) -> Option<(u64, u64, u64)> {
    let core = tag.strip_prefix('v').unwrap_or(tag);
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let mut num = || parts.next()?.parse::<u64>().ok();
    let v = (num()?, num()?, num()?);
    parts.next().is_none().then_some(v)
}

/// What the spec needs that `release` lacks (one message per feature).
pub fn unsupported(release: &Release, spec: &kindex_crds::VectorIndexSpec) -> Vec<String> {
    let name = release.name();
    let mut out = Vec::new();
    if !release.peer_tls && kindex_crds::PeerTlsSpec::enabled(spec.peer_tls.as_ref()) {
        out.push(format!("kindex {name} has no peer mTLS (spec.peerTls)"));
    }
    if !release.api_keys
        && spec
            .auth
            .as_ref()
            .is_some_and(|a| a.api_key_secret_ref.is_some())
    {
        out.push(format!(
            "kindex {name} has no API keys (spec.auth.apiKeySecretRef)"
        ));
    }
    if !release.quantization && !spec.quantization.is_none() {
        out.push(format!(
            "kindex {name} has no quantization (spec.quantization)"
        ));
    }
    if !release.vectors_on_disk && spec.storage.vectors_on_disk {
        out.push(format!(
            "kindex {name} cannot keep vectors on disk (spec.storage.vectorsOnDisk)"
        ));
    }
    out
}

/// Why running `image` would be a rollback the data cannot survive: the volumes hold
/// `data_format` (the highest any node of the index reported), newer than the release
/// reads. `None` when it can run (this build, or an old release that reads the data).
pub fn rollback_refusal(
    image: &str,
    default_image: &str,
    data_format: Option<u32>,
) -> Option<String> {
    let release = of(image, default_image)?;
    let format = data_format?;
    (format > release.reads_data_format).then(|| {
        format!(
            "rollback to {image} refused: the volumes hold data format {format}, written by a \
             newer kindex; {} reads data format {} at most and would stop on it (set spec.image \
             back to a newer build)",
            release.name(),
            release.reads_data_format
        )
    })
}

/// Every reason the spec cannot run on `image` now, for the status and a Warning event.
pub fn refusals(
    image: &str,
    default_image: &str,
    spec: &kindex_crds::VectorIndexSpec,
    data_format: Option<u32>,
) -> Vec<String> {
    let mut out: Vec<String> = rollback_refusal(image, default_image, data_format)
        .into_iter()
        .collect();
    if let Some(r) = of(image, default_image) {
        out.extend(
            unsupported(r, spec)
                .into_iter()
                .map(|m| format!("spec.image {image}: {m}")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "kindex/kindex-node:0.1.0";

    #[test]
    fn images_map_to_releases_by_tag() {
        let v010 = Some(&RELEASES[0]);
        assert_eq!(of("kindex/kindex-node:v0.1.0", DEFAULT), v010);
        assert_eq!(of("registry:5000/kindex/kindex-node:v0.1.0", DEFAULT), v010);
        if env!("CARGO_PKG_VERSION") != "0.1.0" {
            assert_eq!(of("registry:5000/kindex/kindex-node:0.1.0", DEFAULT), v010);
        }
        assert_eq!(
            of("kindex/kindex-node:v0.1.0-rc.1@sha256:ab", DEFAULT),
            v010
        );
        // The operator's own default image is this build, whatever its tag, and so is a tag
        // of this build's own version.
        assert_eq!(of(DEFAULT, DEFAULT), None);
        let own = concat!(
            "registry.example.com/kindex/kindex-node:",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(of(own, "other/image:1"), None);
        for other in [
            "kindex/kindex-node",
            "kindex/kindex-node:latest",
            "kindex/kindex-node:broken",
            "kindex/kindex-node:v0.2.0",
            "kindex/kindex-node:0.1",
            "kindex/kindex-node:0.1.0.1",
            "registry:5000/kindex/kindex-node",
        ] {
            assert_eq!(of(other, DEFAULT), None, "{other}");
        }
    }

    #[test]
    fn a_rollback_is_refused_only_when_the_data_is_newer_than_the_release_reads() {
        let old = "kindex/kindex-node:v0.1.0";
        // Never ran a newer build, or only wrote what v0.1.0 reads: allowed.
        assert_eq!(rollback_refusal(old, DEFAULT, None), None);
        assert_eq!(rollback_refusal(old, DEFAULT, Some(2)), None);
        let m = rollback_refusal(old, DEFAULT, Some(4)).unwrap();
        assert!(
            m.contains("rollback to kindex/kindex-node:v0.1.0 refused")
                && m.contains("data format 4")
                && m.contains("v0.1.0 reads data format 2 at most"),
            "{m}"
        );
        assert!(rollback_refusal(old, DEFAULT, Some(3)).is_some());
        // Unknown tags and this build are never refused.
        for image in [
            DEFAULT,
            "kindex/kindex-node:latest",
            "kindex/kindex-node:broken",
        ] {
            assert_eq!(rollback_refusal(image, DEFAULT, Some(4)), None, "{image}");
        }
    }

    #[test]
    fn features_an_old_release_lacks_are_named() {
        let mut spec = kindex_crds::VectorIndexSpec::new(8, kindex_crds::Metric::L2);
        let old = "kindex/kindex-node:v0.1.0";
        assert!(refusals(old, DEFAULT, &spec, None).is_empty());
        spec.peer_tls = Some(kindex_crds::PeerTlsSpec { enabled: true });
        let r = refusals(old, DEFAULT, &spec, Some(4));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(
            r[1].contains("v0.1.0 has no peer mTLS (spec.peerTls)"),
            "{r:?}"
        );
        assert!(refusals(DEFAULT, DEFAULT, &spec, Some(4)).is_empty());

        let mut spec = kindex_crds::VectorIndexSpec::new(8, kindex_crds::Metric::L2);
        spec.storage.vectors_on_disk = true;
        let r = refusals(old, DEFAULT, &spec, None);
        assert_eq!(
            r,
            [
                "spec.image kindex/kindex-node:v0.1.0: kindex v0.1.0 cannot keep vectors on disk \
              (spec.storage.vectorsOnDisk)"
            ]
        );
        assert!(refusals(DEFAULT, DEFAULT, &spec, None).is_empty());
    }
}
