//! The API role in this test process on port 0, with a database, a broker
//! and an HTTP client of its own: `spawn_app(backend)` gives a test one
//! value that holds them all, dropped together.

use orderflow::app::{Application, Role};
use orderflow::shutdown::{self, ShutdownTrigger};
use orderflow::store::SharedStore;
use serde_json::Value;

use super::{config_from_env, env_for, start_broker, Backend, TestBroker, TestDb};

/// The API role running in this test process.
pub struct TestApp {
    pub base: String,
    pub store: SharedStore,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub broker: TestBroker,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

/// The API on a fresh database of `backend` and a mock cluster of its own.
pub async fn spawn_app(backend: Backend) -> TestApp {
    TestApp::builder(backend).spawn().await
}

/// What a [`TestApp`] runs on, before it starts.
pub struct AppBuilder {
    backend: Backend,
    broker: Option<TestBroker>,
    env: Vec<(String, String)>,
}

impl AppBuilder {
    /// Another broker than the mock cluster with every topic.
    pub fn broker(mut self, broker: TestBroker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Settings on top of the test environment (`env_for`).
    pub fn env(mut self, extra: &[(&str, &str)]) -> Self {
        self.env
            .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    pub async fn spawn(self) -> TestApp {
        let db = TestDb::new(self.backend).await;
        let broker = self.broker.unwrap_or_else(start_broker);
        let mut env = env_for(&db, &broker);
        env.extend(self.env);
        let app = Application::build(&config_from_env(env), Role::Api)
            .await
            .expect("application builds");
        let addr = app.http_addr().expect("API bound");
        let store = app.store().clone();
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(async move {
            app.run(shutdown).await.expect("application runs");
        });
        TestApp {
            base: format!("http://{addr}"),
            store,
            http: reqwest::Client::new(),
            db,
            broker,
            trigger,
            task,
        }
    }
}

impl TestApp {
    pub fn builder(backend: Backend) -> AppBuilder {
        AppBuilder {
            backend,
            broker: None,
            env: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port` the API listens on.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub async fn create_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/orders"))
            .json(body)
            .send()
            .await
            .expect("POST /api/orders")
    }

    /// `GET path`, the response as it came.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path`, the body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .await
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// Shuts the API down and waits for it; then the database and the
    /// broker go.
    pub async fn stop(self) {
        self.trigger.trigger();
        self.task.await.expect("application task");
    }
}
