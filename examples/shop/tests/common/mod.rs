//! What the shop's tests share: their own PostgreSQL schema and Redis key
//! prefix (tests run in parallel with other test binaries on the same
//! database and Redis), the service started as a child process, a minimal
//! HTTP/1.1 client, and the e-mails the worker wrote.
//!
//! A missing PostgreSQL or Redis fails the test with a message that says how
//! to start it: these tests never pass by skipping.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::PgConnection;
use diesel_migrations::MigrationHarness;
use serde_json::Value;

pub const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
pub const START_REDIS: &str =
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no";

pub fn pg_url() -> String {
    std::env::var("POSTGRES_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `shop_<tag>_<pid>_<n>`: unique per process and call.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "shop_{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn pg_admin() -> PgConnection {
    let url = pg_url();
    PgConnection::establish(&url).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL does not answer at {url} ({e}). The shop's tests need it: start it with\n  \
             {START_POSTGRES}\nor set POSTGRES_DATABASE_URL."
        )
    })
}

/// A PostgreSQL schema of this test's own, dropped with everything in it at
/// the end. Its URL sets `search_path` (`?options=-csearch_path%3D...`), so
/// the service, its migrations and the test's own connections all use it.
pub struct PgSchema {
    pub name: String,
    pub url: String,
}

impl PgSchema {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        pg_admin()
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("CREATE SCHEMA");
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        PgSchema { name, url }
    }

    /// A plain connection in the schema (for checks).
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// A wrapped connection in the schema, migrated.
    pub fn migrated(&self) -> shop::DbConn {
        let mut conn = shop::DbConn::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url));
        conn.run_pending_migrations(shop::MIGRATIONS)
            .expect("migrations");
        conn
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        let result = PgConnection::establish(&pg_url())
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.batch_execute(&sql).map_err(|e| e.to_string()));
        if let Err(e) = result {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// A Redis key prefix of this test's own; its keys are deleted at the end.
pub struct RedisPrefix {
    pub prefix: String,
    client: redis::Client,
}

impl RedisPrefix {
    pub fn new(tag: &str) -> Self {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).expect("a valid REDIS_URL");
        let ping = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if let Err(e) = ping {
            panic!(
                "Redis does not answer at {url} ({e}). The shop's tests need it: start it with\n  \
                 {START_REDIS}\nor set REDIS_URL."
            );
        }
        RedisPrefix {
            prefix: format!("{}:", unique(tag)),
            client,
        }
    }

    pub fn keys(&self) -> shop::Keys {
        shop::Keys::new(self.prefix.clone())
    }

    pub fn conn(&self) -> redis::Connection {
        self.client.get_connection().expect("a Redis connection")
    }

    /// Every key under the prefix.
    pub fn all_keys(&self) -> Vec<String> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .expect("KEYS");
        keys
    }

    pub fn list(&self, key: &str) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query(&mut self.conn())
            .expect("LRANGE")
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let Ok(mut conn) = self.client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

// ---------------------------------------------------------------------------
// The service, as child processes of the real binary

/// `shop serve` on a free port and, once started, `shop worker`, in their
/// own schema and key prefix. Killed and cleaned up on drop; on a failure
/// their logs are printed.
pub struct Service {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub mail_dir: PathBuf,
    dir: PathBuf,
    server: Child,
    worker: Option<Child>,
    // Dropped after the processes are killed (fields drop after `drop`).
    pub redis: RedisPrefix,
    pub schema: PgSchema,
}

fn shop_command(schema: &PgSchema, redis: &RedisPrefix, log: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shop"));
    cmd.arg(subcommand)
        .arg("--database-url")
        .arg(&schema.url)
        .arg("--redis-url")
        .arg(redis_url())
        .arg("--redis-prefix")
        .arg(&redis.prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("a log file"));
    cmd
}

impl Service {
    pub fn start(tag: &str) -> Self {
        let schema = PgSchema::new(tag);
        let redis = RedisPrefix::new(tag);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&schema.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a test directory");
        let mail_dir = dir.join("mail");

        let mut server = shop_command(&schema, &redis, &dir.join("serve.log"), "serve")
            .args(["--bind", "127.0.0.1:0", "--pool-size", "8"])
            .spawn()
            .expect("spawn shop serve");
        // The first line on stdout is `listening on http://ADDR`.
        let stdout = server.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = server.kill();
            let _ = server.wait();
            panic!(
                "shop serve did not start (stdout: {line:?}); its log:\n{}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
        };
        Service {
            addr: addr.to_owned(),
            mail_dir,
            dir,
            server,
            worker: None,
            redis,
            schema,
        }
    }

    pub fn start_worker(&mut self) {
        let worker = shop_command(
            &self.schema,
            &self.redis,
            &self.dir.join("worker.log"),
            "worker",
        )
        .arg("--mail-dir")
        .arg(&self.mail_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn shop worker");
        self.worker = Some(worker);
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        request(&self.addr, method, path, body)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Response {
        self.request("PUT", path, Some(body))
    }

    /// Waits until the worker wrote `n` e-mails (and the queue is empty),
    /// then a little longer, and returns every e-mail written: more than `n`
    /// would be a bug the caller must see.
    pub fn wait_for_emails(&self, n: usize, timeout: Duration) -> Vec<Email> {
        let deadline = Instant::now() + timeout;
        loop {
            let emails = read_emails(&self.mail_dir);
            let queued = self.redis.list(&self.redis.keys().jobs()).len();
            if emails.len() >= n && queued == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {timeout:?}: {} e-mails written, {n} expected, {queued} jobs still queued; worker log:\n{}",
                emails.len(),
                self.log("worker.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Anything more would show up now.
        std::thread::sleep(Duration::from_millis(500));
        read_emails(&self.mail_dir)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.server).chain(self.worker.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- shop serve log ---\n{}",
                tail(&self.log("serve.log"), 60)
            );
            eprintln!(
                "--- shop worker log ---\n{}",
                tail(&self.log("worker.log"), 60)
            );
            eprintln!("(kept in {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one connection per request (`Connection: close`)

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// `x-cache` of a read-through GET.
    pub fn cache(&self) -> &str {
        self.header("x-cache").unwrap_or("none")
    }
}

pub fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{method} {path}: no header end in {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        payload = dechunk(&payload);
    }
    Response {
        status,
        headers,
        body: String::from_utf8(payload).expect("a UTF-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

// ---------------------------------------------------------------------------
// The e-mails the worker wrote (lettre's FileTransport: one .eml per e-mail)

#[derive(Debug, Clone)]
pub struct Email {
    pub file: PathBuf,
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl Email {
    /// `Order #N confirmed` -> N
    pub fn order_id(&self) -> Option<i64> {
        self.subject
            .strip_prefix("Order #")?
            .strip_suffix(" confirmed")?
            .parse()
            .ok()
    }

    /// The `Reference: ...` line of an order confirmation.
    pub fn reference(&self) -> Option<&str> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix("Reference: "))
    }
}

pub fn read_emails(dir: &Path) -> Vec<Email> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut emails = Vec::new();
    for entry in entries.flatten() {
        let file = entry.path();
        if file.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .or_else(|| text.split_once("\n\n"))
            .unwrap_or((&text, ""));
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        emails.push(Email {
            to: header("To:"),
            subject: header("Subject:"),
            body: body.replace("\r\n", "\n"),
            file,
        });
    }
    emails
}
