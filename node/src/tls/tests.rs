#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use super::issue::{Ca, Validity, write_dir};
use super::*;

fn ca() -> Ca {
    Ca::generate("test CA", Validity::from_now(Duration::from_secs(3600))).unwrap()
}

fn names() -> Vec<String> {
    vec!["n.test".into()]
}

fn week() -> Validity {
    Validity::from_now(Duration::from_secs(7 * 86_400))
}

#[test]
fn a_missing_or_bad_directory_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = PeerTls::load(tmp.path(), None).unwrap_err().to_string();
    assert!(e.contains("tls.crt"), "{e}");
    std::fs::write(tmp.path().join(CERT_FILE), "not pem").unwrap();
    std::fs::write(tmp.path().join(KEY_FILE), "not pem").unwrap();
    std::fs::write(tmp.path().join(CA_FILE), "not pem").unwrap();
    let e = PeerTls::load(tmp.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("tls.crt") && e.contains("no PEM certificate"),
        "{e}"
    );
}

#[test]
fn reload_takes_a_new_set_and_keeps_the_old_one_when_the_new_one_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca();
    write_dir(
        tmp.path(),
        &ca.issue(&names(), week()).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    let tls = PeerTls::load(tmp.path(), None).unwrap();
    assert_eq!(tls.generation(), 0);
    assert!(!tls.reload().unwrap(), "nothing changed");
    let first = tls.material();

    // A certificate whose key is another's (a rotation caught half-way): refused, the set in
    // force stays.
    let a = ca.issue(&names(), week()).unwrap();
    let b = ca.issue(&names(), week()).unwrap();
    std::fs::write(tmp.path().join(CERT_FILE), &a.cert_pem).unwrap();
    std::fs::write(tmp.path().join(KEY_FILE), &b.key_pem).unwrap();
    let e = tls.reload().unwrap_err();
    assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e}");
    assert!(Arc::ptr_eq(&first, &tls.material()));
    assert_eq!(tls.generation(), 0);

    // The matching key arrives: the new set is in force, and channels know to reconnect.
    std::fs::write(tmp.path().join(KEY_FILE), &a.key_pem).unwrap();
    assert!(tls.reload().unwrap());
    assert!(!Arc::ptr_eq(&first, &tls.material()));
    assert_eq!(tls.generation(), 1);

    // Two CAs (a CA rotation's overlap).
    let other = super::issue::Ca::generate("second CA", week()).unwrap();
    write_dir(
        tmp.path(),
        &a,
        &format!("{}{}", ca.cert_pem(), other.cert_pem()),
    )
    .unwrap();
    assert!(tls.reload().unwrap());
    assert_eq!(tls.material().ca_count(), 2);
}

/// A node started while its key pair is rotated file by file loads the pair once both
/// files are written; a mismatch that lasts is still refused, after the settle time.
#[test]
fn start_waits_out_a_rotation_caught_half_way() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca();
    let a = ca.issue(&names(), week()).unwrap();
    let b = ca.issue(&names(), week()).unwrap();
    std::fs::write(tmp.path().join(CERT_FILE), &a.cert_pem).unwrap();
    std::fs::write(tmp.path().join(KEY_FILE), &b.key_pem).unwrap();

    let started = std::time::Instant::now();
    let e = load_settled(tmp.path(), Layout::KeyPairOnly, Duration::from_millis(400)).unwrap_err();
    assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(400));

    let dir = tmp.path().to_path_buf();
    let cert = b.cert_pem.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.join(CERT_FILE), cert).unwrap();
    });
    let (m, _) = load_settled(tmp.path(), Layout::KeyPairOnly, Duration::from_secs(10)).unwrap();
    writer.join().unwrap();
    let served = rustls::pki_types::CertificateDer::pem_slice_iter(b.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        m.certificate(),
        served.as_ref(),
        "the completed pair is loaded"
    );

    // A missing file is not a rotation in flight: refused at once.
    std::fs::remove_file(tmp.path().join(KEY_FILE)).unwrap();
    let started = std::time::Instant::now();
    let e = load_settled(tmp.path(), Layout::KeyPairOnly, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(e, TlsFileError::Read { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn channels_reconnect_after_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca();
    write_dir(
        tmp.path(),
        &ca.issue(&names(), week()).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    let tls = Arc::new(PeerTls::load(tmp.path(), None).unwrap());
    let channels = crate::channels::Channels::new(Some(tls.clone()));
    channels.get("127.0.0.1:1").unwrap();
    channels.get("127.0.0.1:2").unwrap();
    assert_eq!(channels.len(), 2);
    write_dir(
        tmp.path(),
        &ca.issue(&names(), week()).unwrap(),
        ca.cert_pem(),
    )
    .unwrap();
    assert!(tls.reload().unwrap());
    channels.get("127.0.0.1:1").unwrap();
    assert_eq!(
        channels.len(),
        1,
        "the channels made with the old set are dropped"
    );
}

#[test]
fn client_tls_needs_no_ca_and_serves_the_new_certificate_after_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca();
    let a = ca.issue(&names(), week()).unwrap();
    std::fs::write(tmp.path().join(CERT_FILE), &a.cert_pem).unwrap();
    std::fs::write(tmp.path().join(KEY_FILE), &a.key_pem).unwrap();
    let tls = ClientTls::load(tmp.path()).unwrap();
    assert_eq!(tls.material().ca_count(), 0, "no ca.crt needed");
    let first = tls.material().certificate().to_vec();
    assert!(!tls.reload().unwrap(), "nothing changed");

    // A ca.crt appearing changes nothing: it is not read.
    std::fs::write(tmp.path().join(CA_FILE), ca.cert_pem()).unwrap();
    assert!(!tls.reload().unwrap());

    let b = ca.issue(&names(), week()).unwrap();
    std::fs::write(tmp.path().join(CERT_FILE), &b.cert_pem).unwrap();
    std::fs::write(tmp.path().join(KEY_FILE), &b.key_pem).unwrap();
    assert!(tls.reload().unwrap());
    assert_eq!(tls.generation(), 1);
    assert_ne!(first, tls.material().certificate());

    // Missing key: refused at load, with the file named.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join(CERT_FILE), &a.cert_pem).unwrap();
    let e = ClientTls::load(empty.path()).unwrap_err().to_string();
    assert!(e.contains("tls.key"), "{e}");
}
