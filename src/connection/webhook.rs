//! Phase 3, for the clients the webhook decides (SPEC §9): the HTTPS POST and its answer.
//! hyper's HTTP/1.1 client over rustls, its idle connections reused across CONNECTs; at
//! most `max_concurrent` requests in flight (one more fails at once, as overload); every
//! request under a hard deadline (the request timeout, and never past the connect
//! deadline). What the answer decides is `Trust::decide`'s business, not this file's.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tokio::time::timeout_at;

use crate::auth::webhook::{cache_key, Answer, Cache, Request, MAX_ANSWER_BYTES};
use crate::config::WebhookConfig;
use crate::metrics::{self, Metrics};
use crate::trust::unix_now;
use crate::trust::webhook::WebhookTrust;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle connection to the webhook is kept for the next CONNECT.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the webhook gave no answer. Each is answered Server unavailable (0x88 / 0x03): the
/// client may retry, unlike after a deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookFailure {
    #[error("no answer before the deadline")]
    Timeout,
    #[error("connection or protocol error, or an unexpected status")]
    Error,
    #[error("server error status")]
    Status5xx,
    #[error("max_concurrent requests already in flight")]
    Overload,
}

impl WebhookFailure {
    /// The `result` label of `mqttgate_webhook_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            WebhookFailure::Timeout => "timeout",
            WebhookFailure::Error => "error",
            WebhookFailure::Status5xx => "status_5xx",
            WebhookFailure::Overload => "overload",
        }
    }

    /// The refusal's label on `mqttgate_connections_closed_total`.
    pub fn refusal_label(self) -> &'static str {
        match self {
            WebhookFailure::Timeout => "webhook_timeout",
            WebhookFailure::Error => "webhook_error",
            WebhookFailure::Status5xx => "webhook_status_5xx",
            WebhookFailure::Overload => "webhook_overload",
        }
    }
}

/// The webhook as connections share it: the settings fixed at start, the in-flight
/// bound, the answer cache, and the HTTP client built for the trust state's TLS settings.
pub struct Webhook {
    config: WebhookConfig,
    permits: Semaphore,
    cache: Option<Mutex<Cache>>,
    /// Rebuilt when a reload brings new TLS settings (CA, client certificate); the old
    /// client's pooled connections close when the last request using it ends.
    client: Mutex<Option<(Arc<rustls::ClientConfig>, HttpsClient)>>,
}

/// One asked answer and how it came, for the audit log.
pub struct Asked {
    pub answer: Arc<Answer>,
    pub cached: bool,
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Webhook {
        Webhook {
            permits: Semaphore::new(config.max_concurrent),
            cache: config.cache_entries.map(|n| Mutex::new(Cache::new(n))),
            client: Mutex::new(None),
            config,
        }
    }

    fn client(&self, tls: &Arc<rustls::ClientConfig>) -> HttpsClient {
        let mut slot = self.client.lock().expect("not poisoned");
        match &*slot {
            Some((built_for, client)) if Arc::ptr_eq(built_for, tls) => client.clone(),
            _ => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((**tls).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http);
                // Idle connections are closed by the pool's timer, before a webhook
                // behind a load balancer would drop them mid-request.
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .build(https);
                *slot = Some((tls.clone(), client.clone()));
                client
            }
        }
    }

    /// The answer for this request: from the cache, else from the webhook before
    /// `deadline` or the request timeout, whichever is sooner. Counted and timed.
    pub async fn ask(
        &self,
        trust: &WebhookTrust,
        request: &Request<'_>,
        deadline: tokio::time::Instant,
        metrics: &Metrics,
    ) -> Result<Asked, WebhookFailure> {
        let count = |result| {
            metrics
                .webhook_requests
                .get_or_create(&metrics::Result_ { result })
                .inc();
        };
        let body = request.body();
        let key = cache_key(&body);
        if let Some(cache) = &self.cache {
            if let Some(answer) = cache.lock().expect("not poisoned").get(&key, unix_now()) {
                count("cached");
                return Ok(Asked {
                    answer,
                    cached: true,
                });
            }
        }
        // Waiting for a permit would make a slow webhook everyone's wait.
        let Ok(_permit) = self.permits.try_acquire() else {
            count(WebhookFailure::Overload.label());
            return Err(WebhookFailure::Overload);
        };
        let started = Instant::now();
        let deadline = deadline.min(tokio::time::Instant::now() + self.config.timeout);
        let client = self.client(&trust.tls);
        let result = timeout_at(
            deadline,
            self.post(&client, trust.authorization.as_ref(), body),
        )
        .await
        .unwrap_or(Err(WebhookFailure::Timeout));
        metrics
            .webhook_request_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                count(answer.label());
                let answer = Arc::new(answer);
                if let Some(cache) = &self.cache {
                    cache
                        .lock()
                        .expect("not poisoned")
                        .insert(key, answer.clone(), unix_now());
                }
                Ok(Asked {
                    answer,
                    cached: false,
                })
            }
            Err(failure) => {
                count(failure.label());
                Err(failure)
            }
        }
    }

    async fn post(
        &self,
        client: &HttpsClient,
        authorization: Option<&HeaderValue>,
        body: Vec<u8>,
    ) -> Result<Answer, WebhookFailure> {
        let mut request = hyper::Request::post(self.config.url.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| WebhookFailure::Error)?;
        if let Some(value) = authorization {
            request.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        let response = client
            .request(request)
            .await
            .map_err(|_| WebhookFailure::Error)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(WebhookFailure::Status5xx);
        }
        // Azure's webhook answers 200 with a decision; a 4xx is a misconfiguration on
        // our side (the token, the URL), not a verdict on the client.
        if !status.is_success() {
            return Err(WebhookFailure::Error);
        }
        match Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
        {
            Ok(body) => Ok(Answer::parse(&body.to_bytes(), unix_now())),
            Err(e) if e.is::<LengthLimitError>() => Ok(Answer::Malformed("answer too large")),
            Err(_) => Err(WebhookFailure::Error),
        }
    }
}
