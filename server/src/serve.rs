//! `radserve serve`: create the data directory, bind the DIMSE and HTTP listeners,
//! announce them, run until shutdown.
//!
//! [`Server::bind`] does everything that can fail at start, so that once
//! [`Server::listening_line`] is printed the ports are open; [`Server::run`] serves until
//! the given shutdown future resolves (in the binary: SIGINT or SIGTERM, see
//! [`crate::shutdown::signal`]).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::dimse;
use crate::infer::Models;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::shutdown;
use crate::store::{self, Archive, ArchiveConfig};

/// Both listeners bind on every IPv4 interface: a PACS forwards from another host.
pub const BIND_ADDRESS: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// After shutdown is requested, the server stops within this long whatever is running.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data directory {}: {reason}", path.display())]
    DataDir {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot listen for {service} on {addr}: {reason}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("cannot open the archive in {}: {reason}", path.display())]
    Archive {
        path: PathBuf,
        reason: store::StoreError,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("models: {0}")]
    Models(#[from] crate::infer::ModelsError),
    #[error("pipeline: {0}")]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("EMR: {0}")]
    Emr(String),
}

/// A server whose listeners are bound, ready to [`run`](Server::run).
pub struct Server {
    settings: Settings,
    /// Shared by DIMSE and HTTP (cheap to clone).
    archive: Archive,
    pipeline: Pipeline,
    dicom: TcpListener,
    http: TcpListener,
    dicom_addr: SocketAddr,
    http_addr: SocketAddr,
    /// The EMR service (also held by the pipeline), for the HL7 v2 listener.
    emr: crate::emr::Emr,
    /// The HL7 v2 MLLP listener, when `[emr] mllp_port` is set.
    mllp: Option<(TcpListener, crate::emr::mllp::MllpConfig)>,
    mllp_addr: Option<SocketAddr>,
    /// The senders of results to the EMR (`[emr.fhir_push]`, `[emr.hl7_out]`).
    deliverer: crate::emr::deliver::Deliverer,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("dicom_addr", &self.dicom_addr)
            .field("http_addr", &self.http_addr)
            .field("mllp_addr", &self.mllp_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Creates the data directory, opens the archive and binds both listeners (port 0:
    /// a free port).
    pub async fn bind(settings: Settings) -> Result<Server, ServeError> {
        tokio::fs::create_dir_all(&settings.data)
            .await
            .map_err(|reason| ServeError::DataDir {
                path: settings.data.clone(),
                reason,
            })?;
        let archive = Archive::open(ArchiveConfig {
            data_dir: settings.data.clone(),
            duplicate_policy: settings.store.duplicate_policy,
        })
        .await
        .map_err(|reason| ServeError::Archive {
            path: settings.data.clone(),
            reason,
        })?;
        let pipeline_config = PipelineConfig::parse(&settings.pipeline)?;
        let model_configs = crate::infer::configured_models(
            &settings.models,
            pipeline_config.demo_models,
            &settings.data,
        )?;
        let device = settings
            .device
            .as_str()
            .parse::<radserve_models::device::DeviceChoice>()
            .map_err(crate::infer::ModelsError::from)?;
        let models = Models::start(model_configs, device)?;
        let emr_config = crate::emr::EmrConfig::from_table(&settings.emr)
            .map_err(|e| ServeError::Emr(format!("[emr]: {e}")))?;
        let emr = crate::emr::Emr::open(archive.clone(), emr_config.join.clone())
            .await
            .map_err(|e| ServeError::Emr(e.to_string()))?;
        let deliverer = crate::emr::deliver::Deliverer::open(
            archive.clone(),
            models.clone(),
            emr_config.delivery.clone(),
        )
        .await
        .map_err(|e| ServeError::Emr(e.to_string()))?;
        let pipeline = Pipeline::new(archive.clone(), models, pipeline_config, &settings.routes)?
            .with_emr(emr.clone());
        let (dicom, dicom_addr) = listen("DICOM", settings.dicom.port).await?;
        let (http, http_addr) = listen("HTTP", settings.http.port).await?;
        let (mllp, mllp_addr) = match emr_config.mllp_port {
            None => (None, None),
            Some(port) => {
                let (listener, addr) = listen("HL7 MLLP", port).await?;
                info!(mllp_port = addr.port(), "HL7 v2 MLLP listener bound");
                let config = crate::emr::mllp::MllpConfig {
                    max_message_bytes: emr_config.max_message_bytes,
                    ..Default::default()
                };
                (Some((listener, config)), Some(addr))
            }
        };
        info!(
            version = env!("CARGO_PKG_VERSION"),
            data = %settings.data.display(),
            config = ?settings.config_file,
            device = %settings.device,
            ae_title = %settings.dicom.ae_title,
            dicom_port = dicom_addr.port(),
            http_port = http_addr.port(),
            "radserve listening"
        );
        Ok(Server {
            settings,
            archive,
            pipeline,
            dicom,
            http,
            dicom_addr,
            http_addr,
            emr,
            mllp,
            mllp_addr,
            deliverer,
        })
    }

    /// The HL7 v2 MLLP listener's address, when `[emr] mllp_port` is set (the port is also
    /// logged at info level; the stdout contract line is unchanged).
    pub fn mllp_addr(&self) -> Option<SocketAddr> {
        self.mllp_addr
    }

    pub fn dicom_addr(&self) -> SocketAddr {
        self.dicom_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The line printed on stdout once the ports are open (a contract with tools):
    /// `listening dicom=<port> http=<port>`.
    pub fn listening_line(&self) -> String {
        format!(
            "listening dicom={} http={}",
            self.dicom_addr.port(),
            self.http_addr.port()
        )
    }

    /// Serves DIMSE and HTTP until `shutdown` resolves, then stops accepting, lets
    /// running work finish (bounded by [`SHUTDOWN_LIMIT`]) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server {
            settings,
            archive,
            pipeline,
            dicom,
            http,
            emr,
            mllp,
            deliverer,
            ..
        } = self;
        let (trigger, handle) = shutdown::channel();

        let mllp = {
            let handle = handle.clone();
            async move {
                if let Some((listener, config)) = mllp {
                    crate::emr::mllp::serve(listener, emr, config, handle).await;
                }
            }
        };

        let dimse = dimse::serve(
            dicom,
            Arc::new(settings.dicom.clone()),
            archive.clone(),
            handle.clone(),
        );

        let max_body_bytes = usize::try_from(settings.http.max_body_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX);
        pipeline.start(handle.clone());
        deliverer.start(handle.clone());
        let state = AppState::new(&settings, archive.clone()).with_pipeline(pipeline);
        let app = api::router(state, max_body_bytes);
        let mut http_stop = handle.clone();
        let http = async move {
            // Connect info: the auth middleware records the client address in audits.
            axum::serve(
                http,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { http_stop.requested().await })
            .await
            .map_err(ServeError::Http)?;
            info!("HTTP listener stopped");
            Ok(())
        };

        let both = async {
            let (http, (), ()) = tokio::join!(http, dimse, mllp);
            http
        };
        tokio::pin!(both);
        tokio::select! {
            ended = &mut both => return ended,
            () = shutdown => {}
        }
        trigger.fire();
        match tokio::time::timeout(SHUTDOWN_LIMIT, both).await {
            Ok(result) => {
                info!("radserve stopped");
                result
            }
            Err(_) => {
                warn!(
                    "still busy {}s after shutdown was requested; stopping anyway",
                    SHUTDOWN_LIMIT.as_secs()
                );
                Ok(())
            }
        }
    }
}

async fn listen(service: &'static str, port: u16) -> Result<(TcpListener, SocketAddr), ServeError> {
    let addr = SocketAddr::from((BIND_ADDRESS, port));
    let bind_error = |reason| ServeError::Bind {
        service,
        addr,
        reason,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(data: PathBuf, dicom_port: u16, http_port: u16) -> Settings {
        let mut settings = Settings {
            data,
            ..Settings::default()
        };
        settings.dicom.port = dicom_port;
        settings.http.port = http_port;
        settings
    }

    #[tokio::test]
    async fn binds_free_ports_creates_the_data_dir_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(settings(dir.path().join("nested/data"), 0, 0))
            .await
            .unwrap();
        assert!(dir.path().join("nested/data").is_dir());
        let (dicom, http) = (server.dicom_addr().port(), server.http_addr().port());
        assert_ne!(dicom, 0);
        assert_ne!(http, 0);
        assert_eq!(
            server.listening_line(),
            format!("listening dicom={dicom} http={http}")
        );

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .unwrap();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("stops promptly")
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", dicom))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn binds_the_mllp_listener_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path().join("data"), 0, 0);
        let server = Server::bind(s.clone()).await.unwrap();
        assert_eq!(server.mllp_addr(), None);
        drop(server);
        s.emr.insert("mllp_port".into(), toml::Value::Integer(0));
        let server = Server::bind(s).await.unwrap();
        let port = server.mllp_addr().expect("MLLP bound").port();
        assert_ne!(port, 0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        client
            .write_all(b"\x0bMSH|^~\\&|A|B|C|D|1||ADT^A08|C1|P|2.5\rPID|1||7^^^H^MR\r\x1c\r")
            .await
            .unwrap();
        let mut reply = Vec::new();
        while !reply.ends_with(b"\x1c\r") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed before the ACK");
            reply.extend_from_slice(&buf[..n]);
        }
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.contains("\rMSA|AA|C1|"), "{reply}");
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("stops promptly")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn reports_a_port_in_use() {
        let taken = std::net::TcpListener::bind((BIND_ADDRESS, 0)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = Server::bind(settings(dir.path().to_owned(), port, 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot listen for DICOM on 0.0.0.0:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn reports_an_uncreatable_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Server::bind(settings(file.join("data"), 0, 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot create data directory"), "{err}");
    }
}
