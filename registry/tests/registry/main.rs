//! The registry's integration tests: a real server on 127.0.0.1, driven over HTTP by reqwest,
//! by `oci-client` (as the builder pushes) and by `skopeo`.

mod blobs;
mod clients;
mod lifecycle;
mod manifests;
mod referrers;
mod tokens;
mod util;
