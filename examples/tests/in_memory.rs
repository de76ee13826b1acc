//! How a service tests its own handlers without servers: an axum route whose state holds a
//! repository over `Storage::in_memory()` (through `#[caas_storage::test]`), called over HTTP
//! on loopback, asserting the response and the event the call published. Plain `cargo test`
//! runs it with no FerretDB, Redis or Kafka; `CAAS_TEST_BACKEND=servers` runs the same test
//! against them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use caas_storage::prelude::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "shop", collection = "orders", consistency = strong,
             cache(ttl = "5m"), outbox(topic = "platform.events"))]
struct Order {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    item: String,
    quantity: u32,
    #[repository(version)]
    version: u64,
}

/// The request body of `POST /tenants/{tenant}/orders`.
#[derive(Deserialize)]
struct NewOrder {
    order_id: String,
    item: String,
    quantity: u32,
}

#[derive(Clone)]
struct Shop {
    orders: OrderRepository,
}

type Reply<T> = Result<T, (StatusCode, String)>;

fn failed(e: caas_storage::Error) -> (StatusCode, String) {
    let code = match e {
        caas_storage::Error::DuplicateKey { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.to_string())
}

async fn place(
    State(shop): State<Shop>,
    Path(tenant): Path<String>,
    Json(new): Json<NewOrder>,
) -> Reply<(StatusCode, Json<Order>)> {
    let t = TenantId::new(tenant).map_err(failed)?;
    let order = Order {
        order_id: new.order_id,
        tenant_id: t.to_string(),
        item: new.item,
        quantity: new.quantity,
        version: 0,
    };
    shop.orders.insert(&t, &order).await.map_err(failed)?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn fetch(
    State(shop): State<Shop>,
    Path((tenant, id)): Path<(String, String)>,
) -> Reply<Json<Order>> {
    let t = TenantId::new(tenant).map_err(failed)?;
    match shop.orders.find_by_id(&t, &id).await.map_err(failed)? {
        Some(order) => Ok(Json(order)),
        None => Err((StatusCode::NOT_FOUND, format!("no order {id}"))),
    }
}

fn router(storage: &Storage) -> Router {
    Router::new()
        .route("/tenants/{tenant}/orders", post(place))
        .route("/tenants/{tenant}/orders/{id}", get(fetch))
        .with_state(Shop {
            orders: OrderRepository::new(storage),
        })
}

/// Serves `router` on a loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[caas_storage::test]
async fn placing_an_order_answers_201_and_publishes_order_created(storage: Storage) {
    let base = serve(router(&storage)).await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "order_id": "o1", "item": "lamp", "quantity": 2 });

    let placed = http
        .post(format!("{base}/tenants/acme/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);

    let events = storage.take_test_events().await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].envelope.event_type, "order.created");
    assert_eq!(events[0].envelope.tenant, "acme");
    assert_eq!(events[0].topic, "platform.events");
    assert_eq!(events[0].envelope.payload["item"], "lamp");

    // The same order again is a conflict, and publishes nothing.
    let again = http
        .post(format!("{base}/tenants/acme/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(storage.take_test_events().await.unwrap().is_empty());

    // Tenant-scoped: another tenant does not see it.
    let fetched = http
        .get(format!("{base}/tenants/acme/orders/o1"))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    let order: serde_json::Value = fetched.json().await.unwrap();
    assert_eq!(order["quantity"], 2);
    let other = http
        .get(format!("{base}/tenants/globex/orders/o1"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
