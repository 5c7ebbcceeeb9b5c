//! SPEC §7 "Names": case-insensitive comparison folds ASCII only, and an authentication
//! name that is an IP literal is compared and looked up as an address, end to end.

mod common;

use common::*;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const IP: &str = "IpMatchesAuthenticationName";

async fn env_with(client: String) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{client}]"));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    Env::start(pki, setup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ipv6_username_finds_a_client_registered_in_long_form() {
    let env = env_with(chain_client("2001:0db8:0:0:0:0:0:7", IP)).await;
    let mut spec = leaf("device");
    spec.ips = vec!["2001:db8::7".parse().unwrap()];
    let cert = env.pki.root.issue(&spec).unwrap();
    assert_accepted(&env, &cert, &[], 4, Some("2001:db8::7")).await;
    assert_accepted(&env, &cert, &[], 5, Some("2001:db8::7")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kelvin_sign_common_name_is_refused_for_client_kiosk() {
    let env = env_with(chain_client("kiosk", SUBJECT)).await;
    let cert = env.pki.root.issue(&leaf("\u{212A}iosk")).unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some("kiosk")).await;
    assert_not_authorized(&env, &cert, &[], 5, Some("kiosk")).await;
    // The control: the same client with a plain-ASCII "Kiosk" is admitted.
    let ascii = env.pki.root.issue(&leaf("Kiosk")).unwrap();
    assert_accepted(&env, &ascii, &[], 4, Some("kiosk")).await;
}
