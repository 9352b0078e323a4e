//! Writing `multipart/related` responses (RFC 2387) for WADO-RS. Requests (STOW-RS) are
//! read with `multer`, in [`super::stow`].
//!
//! Each part is `--boundary CRLF headers CRLF CRLF body CRLF`, and the body ends with
//! `--boundary--`. The boundary is random, so no part's bytes can contain it by chance
//! in any realistic sense (DICOM files are not adversarial to our own random nonce).

use bytes::Bytes;
use rand::Rng;

/// Frames a multipart/related body.
#[derive(Debug, Clone)]
pub struct MultipartWriter {
    boundary: String,
    part_type: &'static str,
}

impl MultipartWriter {
    /// A writer whose parts are `part_type` (`application/dicom`, ...).
    pub fn new(part_type: &'static str) -> Self {
        let mut rng = rand::rng();
        let nonce: String = (0..32)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect();
        MultipartWriter {
            boundary: format!("radserve-{nonce}"),
            part_type,
        }
    }

    /// The response's Content-Type.
    pub fn content_type(&self) -> String {
        format!(
            "multipart/related; type=\"{}\"; boundary={}",
            self.part_type, self.boundary
        )
    }

    /// The delimiter and headers that open one part (with an optional Content-Location).
    pub fn part_head(&self, content_type: &str, location: Option<&str>) -> Bytes {
        let mut head = format!("--{}\r\nContent-Type: {content_type}\r\n", self.boundary);
        if let Some(location) = location {
            head.push_str(&format!("Content-Location: {location}\r\n"));
        }
        head.push_str("\r\n");
        Bytes::from(head)
    }

    /// What follows a part's body (CRLF; the next delimiter follows it).
    pub fn part_tail(&self) -> Bytes {
        Bytes::from_static(b"\r\n")
    }

    /// The closing delimiter.
    pub fn close(&self) -> Bytes {
        Bytes::from(format!("--{}--\r\n", self.boundary))
    }

    /// A whole body from in-memory parts (each `(content_type, bytes)`).
    pub fn body_of(&self, parts: Vec<(String, Vec<u8>)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (content_type, bytes) in parts {
            out.extend_from_slice(&self.part_head(&content_type, None));
            out.extend_from_slice(&bytes);
            out.extend_from_slice(&self.part_tail());
        }
        out.extend_from_slice(&self.close());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[tokio::test]
    async fn our_bodies_parse_back_with_multer() {
        let w = MultipartWriter::new("application/octet-stream");
        let ct = w.content_type();
        assert!(ct.starts_with(
            "multipart/related; type=\"application/octet-stream\"; boundary=radserve-"
        ));
        let boundary = ct.rsplit_once("boundary=").unwrap().1.to_owned();
        let body = w.body_of(vec![
            (
                "application/octet-stream".into(),
                b"\r\n--not-the-boundary\r\n".to_vec(),
            ),
            ("application/octet-stream".into(), vec![0u8; 1000]),
        ]);
        let s = stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]);
        let mut mp = multer::Multipart::new(s, boundary);
        let first = mp.next_field().await.unwrap().unwrap();
        assert_eq!(
            first.content_type().map(|m| m.essence_str().to_owned()),
            Some("application/octet-stream".into())
        );
        assert_eq!(
            &first.bytes().await.unwrap()[..],
            b"\r\n--not-the-boundary\r\n"
        );
        let second = mp.next_field().await.unwrap().unwrap();
        assert_eq!(second.bytes().await.unwrap().len(), 1000);
        assert!(mp.next_field().await.unwrap().is_none());
    }
}
