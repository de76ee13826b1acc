//! The HTTP API: a router over the repositories, the session store and the login rate limiter,
//! plus the operations endpoints (`/health`, `/metrics`). Handlers are thin: every rule
//! (tenancy, caching, consistency, events) is the library's.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use caas_storage::audit::{AuditLog, AuditOptions, NewAuditEntry};
use caas_storage::backup::{BackupPlan, RestorePlan};
use caas_storage::prelude::*;
use caas_storage::rate_limit::{Decision, RateLimit, RateLimiter};
use caas_storage::sessions::{SessionOptions, SessionStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::model::*;

/// What every handler shares; cheap to clone (handles and `Arc`s).
#[derive(Clone)]
pub struct App {
    pub storage: Storage,
    users: UserRepository,
    messages: MessageRepository,
    prefs: PreferenceRepository,
    logins: LoginRepository,
    sessions: SessionStore,
    login_limit: RateLimiter,
    audit: AuditLog,
    prometheus: PrometheusHandle,
}

impl App {
    /// The service's state over a connected `storage`.
    pub fn new(storage: Storage, prometheus: PrometheusHandle) -> caas_storage::Result<Self> {
        Ok(App {
            users: UserRepository::new(&storage),
            messages: MessageRepository::new(&storage),
            prefs: PreferenceRepository::new(&storage),
            logins: LoginRepository::new(&storage),
            sessions: storage.sessions(SessionOptions {
                idle_ttl: Duration::from_secs(15 * 60),
                ..SessionOptions::default()
            })?,
            // Five attempts per email per minute, then one every 12 seconds.
            login_limit: storage
                .rate_limiter("login", RateLimit::per(5, Duration::from_secs(60)))?,
            audit: storage.audit_log(AuditOptions::for_database("caas_audit"))?,
            storage,
            prometheus,
        })
    }

    /// Every route.
    pub fn router(self) -> Router {
        Router::new()
            .route("/tenants/{tenant}/users", post(create_user))
            .route("/tenants/{tenant}/users/{id}", get(get_user))
            .route("/tenants/{tenant}/login", post(login))
            .route("/tenants/{tenant}/logout", post(logout))
            .route("/tenants/{tenant}/me", get(me))
            .route(
                "/tenants/{tenant}/conversations/{conversation}/messages",
                post(send_message).get(list_messages),
            )
            .route(
                "/tenants/{tenant}/preferences",
                get(get_preferences).put(put_preferences),
            )
            .route("/tenants/{tenant}/audit", get(verify_audit))
            .route("/admin/cache", get(cache_stats))
            .route("/admin/tenants/{tenant}/backup", post(backup_tenant))
            .route("/admin/tenants/{tenant}/restore", post(restore_tenant))
            .route(
                "/admin/tenants/{tenant}",
                axum::routing::delete(erase_tenant),
            )
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(self)
    }
}

/// A failed request: the status and a JSON body saying why.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<caas_storage::Error> for ApiError {
    fn from(e: caas_storage::Error) -> Self {
        let code = match &e {
            Error::DuplicateKey { .. } | Error::VersionConflict { .. } => StatusCode::CONFLICT,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::InvalidTenant { .. } => StatusCode::BAD_REQUEST,
            e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn tenant(t: &str) -> ApiResult<TenantId> {
    Ok(TenantId::new(t)?)
}

fn hash_password(salt: &str, password: &str) -> String {
    let digest = Sha256::digest(format!("{salt}:{password}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256${salt}${hex}")
}

fn password_matches(stored: &str, password: &str) -> bool {
    let mut parts = stored.splitn(3, '$');
    match (parts.next(), parts.next()) {
        (Some("sha256"), Some(salt)) => hash_password(salt, password) == stored,
        _ => false,
    }
}

/// The session a `Authorization: Bearer <token>` header opens in `tenant`.
async fn authenticate(app: &App, t: &TenantId, headers: &HeaderMap) -> ApiResult<String> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "no bearer token".into()))?;
    let session = app
        .sessions
        .touch::<serde_json::Value>(t, token)
        .await?
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "no such session".into()))?;
    Ok(session.user_id)
}

fn public(u: &User) -> serde_json::Value {
    json!({ "user_id": u.user_id, "email": u.email, "name": u.name, "status": u.status,
            "version": u.version })
}

#[derive(Deserialize)]
struct NewUser {
    user_id: String,
    email: String,
    name: String,
    password: String,
}

async fn create_user(
    State(app): State<App>,
    Path(t): Path<String>,
    Json(body): Json<NewUser>,
) -> ApiResult<impl IntoResponse> {
    let t = tenant(&t)?;
    let salt = uuid::Uuid::new_v4().simple().to_string();
    let user = User {
        user_id: body.user_id,
        tenant_id: t.to_string(),
        email: body.email,
        name: body.name,
        password_hash: hash_password(&salt[..16], &body.password),
        status: "active".into(),
        version: 0,
        created_at: DateTime::now(),
    };
    app.users.insert(&t, &user).await?;
    Ok((StatusCode::CREATED, Json(public(&user))))
}

async fn get_user(
    State(app): State<App>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let user = app
        .users
        .find_by_id(&t, &id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no user {id}")))?;
    Ok(Json(public(&user)))
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

async fn login(
    State(app): State<App>,
    Path(t): Path<String>,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    let t = tenant(&t)?;
    if let Decision::Limited { retry_after } = app.login_limit.check(&t, &body.email).await? {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut response = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many attempts; retry in {secs}s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert("retry-after", secs.to_string().parse().expect("digits"));
        return Ok(response);
    }
    let user = app
        .users
        .query(&t)
        .filter(User::fields().email().eq(body.email.as_str()))
        .include_secrets()
        .first()
        .await?;
    let Some(user) = user.filter(|u| password_matches(&u.password_hash, &body.password)) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong email or password".into(),
        ));
    };
    let (token, _) = app
        .sessions
        .create(&t, &user.user_id, json!({ "email": user.email }))
        .await?;
    // Eventual: queued in Redis, applied in a batch.
    let login = Login {
        login_id: uuid::Uuid::now_v7().simple().to_string(),
        tenant_id: t.to_string(),
        user_id: user.user_id.clone(),
        at: DateTime::now(),
    };
    app.logins.insert(&t, &login).await?;
    app.audit
        .append(
            &t,
            NewAuditEntry::new(
                "user.login",
                &user.user_id,
                format!("user:{}", user.user_id),
            ),
        )
        .await?;
    Ok(Json(json!({ "token": token.secret(), "user_id": user.user_id })).into_response())
}

async fn logout(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let t = tenant(&t)?;
    let user = authenticate(&app, &t, &headers).await?;
    let ended = app.sessions.revoke_all_for_user(&t, &user).await?;
    app.audit
        .append(
            &t,
            NewAuditEntry::new("user.logout", &user, format!("user:{user}"))
                .with_details(json!({ "sessions_ended": ended })),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let id = authenticate(&app, &t, &headers).await?;
    Ok(Json(public(&app.users.get(&t, &id).await?)))
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
}

async fn send_message(
    State(app): State<App>,
    Path((t, conversation)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<NewMessage>,
) -> ApiResult<impl IntoResponse> {
    let t = tenant(&t)?;
    let author = authenticate(&app, &t, &headers).await?;
    let message = Message {
        message_id: uuid::Uuid::now_v7().simple().to_string(),
        tenant_id: t.to_string(),
        conversation_id: conversation,
        author,
        text: body.text,
        version: 0,
        sent_at: DateTime::now(),
    };
    app.messages.insert(&t, &message).await?;
    let token = app.messages.causal_token(&t, &message);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message_id": message.message_id, "causal_token": token.encode() })),
    ))
}

async fn list_messages(
    State(app): State<App>,
    Path((t, conversation)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let f = Message::fields();
    let list = app
        .messages
        .query(&t)
        .filter(f.conversation_id().eq(conversation.as_str()))
        .sort(f.sent_at().asc())
        .fetch()
        .await?;
    let list: Vec<_> = list
        .iter()
        .map(|m| json!({ "message_id": m.message_id, "author": m.author, "text": m.text }))
        .collect();
    Ok(Json(json!({ "messages": list })))
}

#[derive(Deserialize)]
struct Theme {
    theme: String,
}

async fn put_preferences(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Theme>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let user = authenticate(&app, &t, &headers).await?;
    let pref = Preference {
        user_id: user.clone(),
        tenant_id: t.to_string(),
        theme: body.theme,
        version: 0,
    };
    app.prefs.upsert(&t, &pref).await?;
    // Read-your-writes: this instance reads its own write back, whichever tier answers.
    let stored = app.prefs.get(&t, &user).await?;
    Ok(Json(
        json!({ "theme": stored.theme, "version": stored.version }),
    ))
}

async fn get_preferences(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let user = authenticate(&app, &t, &headers).await?;
    let pref = app
        .prefs
        .find_by_id(&t, &user)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no preferences".into()))?;
    Ok(Json(
        json!({ "theme": pref.theme, "version": pref.version }),
    ))
}

async fn verify_audit(
    State(app): State<App>,
    Path(t): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let v = app.audit.verify(&t, ..).await?;
    Ok(Json(
        json!({ "checked": v.checked, "intact": v.is_intact() }),
    ))
}

/// Backs up every entity of one tenant to a file in the temporary directory.
async fn backup_tenant(
    State(app): State<App>,
    Path(t): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let path = std::env::temp_dir().join(format!("caas-demo-{t}.caasbak"));
    let file = std::fs::File::create(&path)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let plan = BackupPlan::new().metas(&metas()).tenant(t).without_ledger();
    let report = app
        .storage
        .backup(&plan, std::io::BufWriter::new(file))
        .await?;
    Ok(Json(json!({ "archive": path, "report": report })))
}

#[derive(Deserialize)]
struct CloneRequest {
    archive: std::path::PathBuf,
    into_tenant: String,
}

/// Restores a tenant's archive as another tenant (a clone), verified before anything is
/// written.
async fn restore_tenant(
    State(app): State<App>,
    Path(t): Path<String>,
    Json(body): Json<CloneRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let (from, to) = (tenant(&t)?, tenant(&body.into_tenant)?);
    let plan = RestorePlan::new().into_tenant(from, to).without_ledger();
    let report = app.storage.restore(&plan, &body.archive).await?;
    Ok(Json(json!(report)))
}

/// Erases one tenant's data everywhere the framework put it.
async fn erase_tenant(
    State(app): State<App>,
    Path(t): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = tenant(&t)?;
    let report = app.storage.erase_tenant(&metas(), &t).await?;
    Ok(Json(json!(report)))
}

async fn cache_stats(State(app): State<App>) -> Json<serde_json::Value> {
    Json(json!(app.storage.cache().metrics()))
}

async fn health(State(app): State<App>) -> impl IntoResponse {
    let report = app.storage.health().await;
    let code = match report.status {
        caas_storage::HealthStatus::Down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(report))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
}
