//! The main job's script: a real HTTP client drives the running service through what its users
//! and operators do, printing every request and what came back, and failing on anything
//! unexpected.

use std::time::{Duration, Instant};

use caas_storage::outbox::envelope_from_message;
use caas_storage::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn step(title: &str) {
    println!("\n== {title}");
}

/// One HTTP client with the service's base URL; prints each exchange.
struct Http {
    client: Client,
    base: String,
}

impl Http {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Fallible<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let (code, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let shown = value.to_string();
        let shown = if shown.len() > 110 {
            format!("{}…", &shown[..110])
        } else {
            shown
        };
        println!("{method} {path} -> {} {shown}", code.as_u16());
        Ok((code, headers, value))
    }

    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        want: StatusCode,
    ) -> Fallible<Value> {
        let (code, _, value) = self.call(method.clone(), path, token, body).await?;
        if code != want {
            return Err(format!("{method} {path}: wanted {want}, got {code}: {value}").into());
        }
        Ok(value)
    }
}

/// The Redis-tier hits of `entity` in `/admin/cache`'s answer (keyed `database.collection:Name`).
fn redis_hits(stats: &Value, entity: &str) -> u64 {
    stats
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with(&format!(":{entity}")))
        .filter_map(|(_, v)| v["redis_hits"].as_u64())
        .sum()
}

/// Runs the scenario against the service at `base` (`http://host:port`).
pub async fn run(base: &str, storage: &Storage) -> Fallible<()> {
    let http = Http {
        client: Client::builder().timeout(Duration::from_secs(30)).build()?,
        base: base.trim_end_matches('/').to_owned(),
    };
    // Each run is its own pair of tenants, so runs never see each other's data.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let acme = format!("acme-{}", &run[20..]);
    let globex = format!("globex-{}", &run[20..]);
    let (get, post, put) = (Method::GET, Method::POST, Method::PUT);

    step("users: strong, unique email per tenant, password hash a secret field");
    for (t, id, email, name) in [
        (&acme, "u-ada", "ada@acme.test", "Ada"),
        (&acme, "u-grace", "grace@acme.test", "Grace"),
        (&globex, "u-ada", "ada@acme.test", "Ada at Globex"),
    ] {
        let body =
            json!({ "user_id": id, "email": email, "name": name, "password": "correct horse" });
        let created = http
            .expect(
                post.clone(),
                &format!("/tenants/{t}/users"),
                None,
                Some(body),
                StatusCode::CREATED,
            )
            .await?;
        if created.get("password_hash").is_some() {
            return Err("the API returned a password hash".into());
        }
    }
    let dup =
        json!({ "user_id": "u-other", "email": "ada@acme.test", "name": "Copy", "password": "x" });
    http.expect(
        post.clone(),
        &format!("/tenants/{acme}/users"),
        None,
        Some(dup),
        StatusCode::CONFLICT,
    )
    .await?;
    let at_globex = http
        .expect(
            get.clone(),
            &format!("/tenants/{globex}/users/u-ada"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    if at_globex["name"] != "Ada at Globex" {
        return Err("the same id in another tenant is another user".into());
    }

    step("cache: repeated reads are served by Redis");
    let before = http
        .expect(get.clone(), "/admin/cache", None, None, StatusCode::OK)
        .await?;
    for _ in 0..3 {
        http.expect(
            get.clone(),
            &format!("/tenants/{acme}/users/u-ada"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    }
    let after = http
        .expect(get.clone(), "/admin/cache", None, None, StatusCode::OK)
        .await?;
    let hits = redis_hits(&after, "User") - redis_hits(&before, "User");
    println!("User reads served by Redis: {hits} of 3");
    if hits < 2 {
        return Err(format!("wanted at least 2 cache hits of 3 reads, got {hits}").into());
    }

    step("login: rate limited per email (5 a minute)");
    let wrong = json!({ "email": "ada@acme.test", "password": "wrong" });
    let mut tripped = None;
    for attempt in 1..=8 {
        let (code, headers, _) = http
            .call(
                post.clone(),
                &format!("/tenants/{acme}/login"),
                None,
                Some(wrong.clone()),
            )
            .await?;
        match code {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                let after = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                tripped = Some((attempt, after));
                break;
            }
            other => return Err(format!("login attempt {attempt}: {other}").into()),
        }
    }
    let Some((attempt, retry_after)) = tripped else {
        return Err("8 wrong passwords and no rate limit".into());
    };
    println!("rate limit tripped at attempt {attempt}, Retry-After: {retry_after}s");
    if attempt != 6 {
        return Err(format!("the limit is 5 attempts, tripped at {attempt}").into());
    }

    step("sessions: log in, use the token, log out");
    let creds = json!({ "email": "grace@acme.test", "password": "correct horse" });
    let session = http
        .expect(
            post.clone(),
            &format!("/tenants/{acme}/login"),
            None,
            Some(creds),
            StatusCode::OK,
        )
        .await?;
    let token = session["token"].as_str().ok_or("no token")?.to_owned();
    let me = http
        .expect(
            get.clone(),
            &format!("/tenants/{acme}/me"),
            Some(&token),
            None,
            StatusCode::OK,
        )
        .await?;
    if me["user_id"] != "u-grace" {
        return Err(format!("/me is {me}").into());
    }
    // The token opens nothing in another tenant.
    http.expect(
        get.clone(),
        &format!("/tenants/{globex}/me"),
        Some(&token),
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await?;

    step("chat: causal, every message an event on chat.messages");
    for text in ["hello", "launch at noon?", "ship it"] {
        http.expect(
            post.clone(),
            &format!("/tenants/{acme}/conversations/c-1/messages"),
            Some(&token),
            Some(json!({ "text": text })),
            StatusCode::CREATED,
        )
        .await?;
    }
    let list = http
        .expect(
            get.clone(),
            &format!("/tenants/{acme}/conversations/c-1/messages"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    let texts: Vec<&str> = list["messages"]
        .as_array()
        .ok_or("no messages")?
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    if texts != ["hello", "launch at noon?", "ship it"] {
        return Err(format!("messages out of order: {texts:?}").into());
    }
    consume_chat_events(storage, &acme, &run, 3).await?;

    step("preferences: read-your-writes");
    for theme in ["dark", "light"] {
        let wrote = http
            .expect(
                put.clone(),
                &format!("/tenants/{acme}/preferences"),
                Some(&token),
                Some(json!({ "theme": theme })),
                StatusCode::OK,
            )
            .await?;
        let read = http
            .expect(
                get.clone(),
                &format!("/tenants/{acme}/preferences"),
                Some(&token),
                None,
                StatusCode::OK,
            )
            .await?;
        if wrote["theme"] != theme || read["theme"] != theme {
            return Err(format!("wrote {theme}, read back {read}").into());
        }
    }

    step("logout, then the token is dead");
    http.expect(
        post.clone(),
        &format!("/tenants/{acme}/logout"),
        Some(&token),
        None,
        StatusCode::NO_CONTENT,
    )
    .await?;
    http.expect(
        get.clone(),
        &format!("/tenants/{acme}/me"),
        Some(&token),
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await?;

    step("audit log: hash-chained per tenant, verified");
    let audit = http
        .expect(
            get.clone(),
            &format!("/tenants/{acme}/audit"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    if audit["intact"] != true || audit["checked"].as_u64() != Some(2) {
        return Err(format!("wanted an intact chain of login + logout, got {audit}").into());
    }

    step("backup, and a restore into a clone tenant");
    let clone = format!("acme-clone-{}", &run[20..]);
    let backup = http
        .expect(
            post.clone(),
            &format!("/admin/tenants/{acme}/backup"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    let archive = backup["archive"]
        .as_str()
        .ok_or("no archive path")?
        .to_owned();
    println!(
        "backed up {} documents of {acme} to {archive}",
        backup["report"]["documents"]
    );
    let restored = http
        .expect(
            post.clone(),
            &format!("/admin/tenants/{acme}/restore"),
            None,
            Some(json!({ "archive": archive, "into_tenant": clone })),
            StatusCode::OK,
        )
        .await?;
    println!("restore state: {}", restored["state"]);
    let copy = http
        .expect(
            get.clone(),
            &format!("/tenants/{clone}/users/u-ada"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    if copy["name"] != "Ada" || copy["email"] != "ada@acme.test" {
        return Err(format!("the clone's u-ada is {copy}").into());
    }
    let cloned = http
        .expect(
            get.clone(),
            &format!("/tenants/{clone}/conversations/c-1/messages"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    if cloned["messages"].as_array().map(Vec::len) != Some(3) {
        return Err(format!("the clone has {cloned}").into());
    }
    // The clone logs in with the same password (the hash was copied), as a tenant of its own.
    let creds = json!({ "email": "grace@acme.test", "password": "correct horse" });
    http.expect(
        post.clone(),
        &format!("/tenants/{clone}/login"),
        None,
        Some(creds),
        StatusCode::OK,
    )
    .await?;
    let erased = http
        .expect(
            Method::DELETE,
            &format!("/admin/tenants/{clone}"),
            None,
            None,
            StatusCode::OK,
        )
        .await?;
    println!("erased the clone: {}", erased["entities"]);
    http.expect(
        get.clone(),
        &format!("/tenants/{clone}/users/u-ada"),
        None,
        None,
        StatusCode::NOT_FOUND,
    )
    .await?;
    http.expect(
        get.clone(),
        &format!("/tenants/{acme}/users/u-ada"),
        None,
        None,
        StatusCode::OK,
    )
    .await?;
    let _ = std::fs::remove_file(&archive);

    step("health");
    let (code, _, report) = http.call(get.clone(), "/health", None, None).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if code != StatusCode::OK || report["status"] != "up" {
        return Err(format!("health is {code} {}", report["status"]).into());
    }

    step("metrics (Prometheus text)");
    let resp = http
        .client
        .get(format!("{}/metrics", http.base))
        .send()
        .await?;
    let code = resp.status();
    let text = resp.text().await?;
    let mut families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("caas_"))
        .collect();
    families.sort_unstable();
    println!(
        "GET /metrics -> {}, {} caas_ metric families",
        code.as_u16(),
        families.len()
    );
    for f in &families {
        println!("  {f}");
    }
    if code != StatusCode::OK {
        return Err(format!("/metrics answered {code}").into());
    }
    Ok(())
}

/// Reads `chat.messages` from the start until `want` `message.sent` events of `tenant` came,
/// handling each once (the relay delivers at least once).
async fn consume_chat_events(
    storage: &Storage,
    tenant: &str,
    run: &str,
    want: usize,
) -> Fallible<()> {
    // Connected as the relay's producer is: brokers and any security settings (SASL, TLS).
    let consumer: StreamConsumer = storage
        .config()
        .kafka
        .client_config()
        .set("group.id", format!("demo-{run}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["chat.messages"])?;
    let dedupe = storage.deduplicator("caas_messaging");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < want && Instant::now() < deadline {
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let event = envelope_from_message(&msg)?;
        if event.tenant != tenant {
            continue;
        }
        let handled = dedupe
            .handle_once("demo", &event.event_id, || async {
                println!(
                    "consumed from Kafka: {} rev {} {}",
                    event.event_type, event.revision, event.payload["text"]
                );
                Ok::<_, caas_storage::Error>(())
            })
            .await?;
        if handled.is_some() && event.event_type == "message.sent" {
            seen += 1;
        }
    }
    if seen < want {
        return Err(format!("{seen} of {want} chat events reached Kafka in 60s").into());
    }
    Ok(())
}
