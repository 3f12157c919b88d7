//! A throwaway PKI for the TLS tests: a CA and the certificates it issues, generated at run time
//! so nothing secret is ever committed.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use stardust::tls::{ClientTls, ServerTls};

/// A certificate authority that lives as long as the test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM): what clients trust.
    pub pem: String,
}

/// A certificate (PEM) and its private key (PEM).
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    /// A new CA called `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "stardust test");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server identity valid for `127.0.0.1` and `localhost`.
    pub fn server_tls(&self) -> ServerTls {
        let id = self.issue(&["127.0.0.1", "localhost"]);
        ServerTls::from_pem(id.cert, id.key).expect("server TLS")
    }

    /// A client that trusts this CA only.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_pem(&self.pem).expect("client TLS")
    }
}
