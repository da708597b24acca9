//! Downloads `https://` (and `http://`) models once when `eali serve` starts, into a local cache
//! directory (in a serving pod, the size-limited emptyDir the controller mounts at
//! [`crate::k8s::objects::MODEL_CACHE_DIR`]), checks them against `model.sha256`, and points
//! the service at the local copy, which [`super::source`] then reads like any file.
//!
//! A copy already in the cache whose checksum matches is used as it is (a restarted container
//! keeps its emptyDir). Certificates are the system's (`SSL_CERT_FILE` and `SSL_CERT_DIR` name
//! others, e.g. a private CA mounted into the pod).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{ServeConfig, ServeError};

/// Redirects followed before giving up (pre-signed and release URLs redirect once or twice).
const MAX_REDIRECTS: usize = 5;

/// Where downloads go and how large they may be.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    pub dir: PathBuf,
    pub limit_bytes: u64,
}

/// Whether a uri is fetched over the network.
pub fn is_remote(uri: &str) -> bool {
    uri.starts_with("https://") || uri.starts_with("http://")
}

/// Downloads every remote model of `config` and rewrites its uri to the local copy.
pub async fn fetch_models(config: &mut ServeConfig, opts: &FetchOptions) -> Result<(), ServeError> {
    for s in &mut config.services {
        let Some(uri) = s.spec.model.uri.clone().filter(|u| is_remote(u)) else {
            continue;
        };
        let name = s.name_any();
        let fail = |reason: String| ServeError::Model {
            name: name.clone(),
            reason: format!("model.uri {uri}: {reason}"),
        };
        let sha = s.spec.model.sha256.clone();
        if let Some(h) = &sha
            && !(h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(fail(format!(
                "model.sha256 {h} is not 64 lowercase hex digits"
            )));
        }
        let local = fetch(&uri, sha.as_deref(), opts).await.map_err(fail)?;
        s.spec.model.uri = Some(local.display().to_string());
    }
    Ok(())
}

/// The cache file for `uri`: named by the URL's hash, keeping the file name's extension (which
/// says the format).
fn cache_path(uri: &str, dir: &Path) -> PathBuf {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let base = path.rsplit('/').next().unwrap_or_default();
    let ext = Path::new(base)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= 16 && e.bytes().all(|b| b.is_ascii_alphanumeric()));
    let key = hex(&Sha256::digest(uri.as_bytes()))[..16].to_string();
    dir.join(match ext {
        Some(e) => format!("{key}.{e}"),
        None => key,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn file_sha256(path: &Path) -> Option<String> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(hex(&Sha256::digest(&bytes)))
}

/// Downloads `uri` into the cache (or finds it there) and returns the local path.
pub async fn fetch(
    uri: &str,
    sha256: Option<&str>,
    opts: &FetchOptions,
) -> Result<PathBuf, String> {
    let dest = cache_path(uri, &opts.dir);
    if tokio::fs::metadata(&dest).await.is_ok() {
        match sha256 {
            Some(want) if file_sha256(&dest).await.as_deref() == Some(want) => {
                tracing::info!(%uri, path = %dest.display(), "model already downloaded");
                return Ok(dest);
            }
            // Without a checksum a cached copy cannot be told from a stale one: fetch again.
            _ => {}
        }
    }
    tokio::fs::create_dir_all(&opts.dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| {
            format!(
                "no CA certificates to check the server with ({e}); mount a bundle and set \
                 SSL_CERT_FILE"
            )
        })?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut url = uri.to_string();
    let started = std::time::Instant::now();
    for _ in 0..=MAX_REDIRECTS {
        let req_uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let resp = client
            .get(req_uri)
            .await
            .map_err(|e| format!("download failed: {}", error_chain(&e)))?;
        let status = resp.status();
        if status.is_redirection() {
            let next = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("{status} without a Location"))?;
            url = redirect_target(&url, next);
            continue;
        }
        if !status.is_success() {
            return Err(format!("the server answered {status}"));
        }
        if let Some(len) = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len > opts.limit_bytes
        {
            return Err(format!(
                "the file has {len} bytes, more than the {} the cache holds",
                opts.limit_bytes
            ));
        }
        let part = dest.with_extension("part");
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("download broke off: {e}"))?;
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            written += chunk.len() as u64;
            if written > opts.limit_bytes {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(format!(
                    "the file is larger than the {} bytes the cache holds",
                    opts.limit_bytes
                ));
            }
            hasher.update(chunk);
            file.write_all(chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        drop(file);
        let got = hex(&hasher.finalize());
        if let Some(want) = sha256
            && got != want
        {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(format!(
                "the download's SHA-256 is {got}, model.sha256 says {want}; refusing it"
            ));
        }
        tokio::fs::rename(&part, &dest)
            .await
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        tracing::info!(
            %uri,
            path = %dest.display(),
            bytes = written,
            sha256 = %got,
            secs = started.elapsed().as_secs_f64(),
            "model downloaded"
        );
        return Ok(dest);
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// An absolute Location as it is; a path against the current URL's scheme and host.
fn redirect_target(current: &str, location: &str) -> String {
    if is_remote(location) {
        return location.to_string();
    }
    let origin_end = current
        .find("://")
        .and_then(|i| current[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(current.len());
    format!(
        "{}/{}",
        &current[..origin_end],
        location.trim_start_matches('/')
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_keep_the_extension_and_differ_by_url() {
        let d = Path::new("/c");
        let a = cache_path("https://h/m/resnet.onnx?sig=1", d);
        let b = cache_path("https://h/m/resnet.onnx?sig=2", d);
        assert_eq!(a.extension().and_then(|e| e.to_str()), Some("onnx"));
        assert_ne!(a, b);
        assert_eq!(cache_path("https://h/x", d).extension(), None);
        assert_eq!(
            redirect_target("https://h:1/a/b", "/c/d"),
            "https://h:1/c/d"
        );
        assert_eq!(redirect_target("https://h/a", "http://o/z"), "http://o/z");
    }
}
