//! The connection rules of both listeners (API and built-in S3 endpoint), over real TCP against a
//! real `ims serve`: the header-read timeout, the idle keep-alive timeout, the connection limit
//! (more connections wait in the listen backlog), and requests that take longer than both
//! timeouts while they progress (a slow upload, a slow download, a slow JSON body).

use crate::common::{Builder, Db, Server, builder};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The API's and the S3 endpoint's `host:port`.
fn ports(s: &Server) -> [(&'static str, String); 2] {
    let s3 = std::fs::read_to_string(s.data.path().join("s3-endpoint")).unwrap();
    [
        ("API", s.url.trim_start_matches("http://").to_string()),
        (
            "S3",
            s3.trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
        ),
    ]
}

fn with(b: Builder, header: &str, idle: &str, max: &str) -> Builder {
    b.env("IMS_HTTP_HEADER_TIMEOUT", header)
        .env("IMS_HTTP_IDLE_TIMEOUT", idle)
        .env("IMS_HTTP_MAX_CONNECTIONS", max)
}

/// How long until the server closes `c` (EOF or reset), reading and discarding anything it
/// sends; `None` if it is still open after `limit`.
fn closed_within(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(t.elapsed())?;
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match c.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(t.elapsed()),
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length`; returns its status and body.
fn read_response(c: &mut TcpStream) -> (u16, Vec<u8>) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut b).expect("response head"),
            1,
            "closed in the head"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    (status, body)
}

fn get(c: &mut TcpStream, host: &str, path: &str) -> (u16, Vec<u8>) {
    write!(c, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    read_response(c)
}

/// A connection that sends nothing, or a request head too slowly, is closed after the header
/// timeout (1 s here), on both listeners; today's keep-alive timeout (30 s) does not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_heads_are_closed_after_the_header_timeout() {
    let s = with(builder(Db::Sqlite).await, "1", "30", "100")
        .start()
        .await;
    for (name, addr) in ports(&s) {
        let mut silent = TcpStream::connect(&addr).unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name}: a silent connection is still open after 5 s"));
        assert!(
            took >= Duration::from_millis(800),
            "{name}: closed after {took:?}"
        );

        // Slowloris: a header line every 300 ms, never the end of the head.
        let mut slow = TcpStream::connect(&addr).unwrap();
        write!(slow, "GET / HTTP/1.1\r\nHost: {addr}\r\n").unwrap();
        let t = Instant::now();
        let mut closed = false;
        while t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(300));
            if slow.write_all(b"X-Slow: 1\r\n").is_err()
                || closed_within(&mut slow, Duration::from_millis(1)).is_some()
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "{name}: a head sent slowly is still read after 5 s");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{name}: {:?}",
            t.elapsed()
        );

        // A connection that sends its request in time is answered.
        let mut c = TcpStream::connect(&addr).unwrap();
        let (status, _) = get(&mut c, &addr, "/");
        assert!(status >= 200, "{name}: {status}");
    }
}

/// After a complete request, a kept-alive connection stays open past the header timeout (1 s)
/// for the next request, and is closed once it has had no request for the idle timeout (2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_are_closed_after_the_idle_timeout() {
    let s = with(builder(Db::Sqlite).await, "1", "2", "100")
        .start()
        .await;
    for (name, addr) in ports(&s) {
        let mut c = TcpStream::connect(&addr).unwrap();
        let first = get(&mut c, &addr, "/");
        // Longer than the header timeout: the connection is kept for its next request.
        assert_eq!(
            closed_within(&mut c, Duration::from_millis(1400)),
            None,
            "{name}"
        );
        assert_eq!(get(&mut c, &addr, "/").0, first.0, "{name}: second request");
        let took = closed_within(&mut c, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name}: an idle connection is still open after 5 s"));
        assert!(
            took >= Duration::from_millis(1700) && took < Duration::from_millis(3500),
            "{name}: closed {took:?} after its last answer"
        );
    }
}

/// With the limit at 20, 50 connections: 20 are served, 30 wait in the listen backlog (their
/// requests unanswered), and are served as the others close; then a fresh connection is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_and_waiting_connections_are_served_later() {
    let s = with(builder(Db::Sqlite).await, "20", "20", "20")
        .start()
        .await;
    for (name, addr) in ports(&s) {
        let mut conns: Vec<TcpStream> = (0..50)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        for c in &mut conns {
            write!(c, "GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        }
        // Which connections have an answer (the first bytes of one) within `wait`.
        let answered = |conns: &mut [TcpStream], wait: Duration| -> Vec<usize> {
            std::thread::sleep(wait);
            let mut out = vec![];
            for (i, c) in conns.iter_mut().enumerate() {
                c.set_nonblocking(true).unwrap();
                let mut b = [0u8; 5];
                if matches!(c.peek(&mut b), Ok(5)) {
                    assert_eq!(&b, b"HTTP/", "{name}");
                    out.push(i);
                }
                c.set_nonblocking(false).unwrap();
            }
            out
        };
        let first = answered(&mut conns, Duration::from_millis(800));
        assert_eq!(first, (0..20).collect::<Vec<_>>(), "{name}: served at once");
        // Closing the served connections lets the waiting ones in, in the order they came.
        let mut rest = conns.split_off(20);
        drop(conns);
        let second = answered(&mut rest, Duration::from_millis(800));
        assert_eq!(second, (0..20).collect::<Vec<_>>(), "{name}: served next");
        let mut last = rest.split_off(20);
        drop(rest);
        assert_eq!(
            answered(&mut last, Duration::from_millis(800)),
            (0..10).collect::<Vec<_>>(),
            "{name}: served last"
        );
        drop(last);
        std::thread::sleep(Duration::from_millis(200));
        let mut fresh = TcpStream::connect(&addr).unwrap();
        let (status, _) = get(&mut fresh, &addr, "/");
        assert!(status >= 200, "{name}: {status}");
    }
}

/// A presigned URL (path and query) of the built-in S3 endpoint for `method` on `ims/<key>`.
async fn presigned(s: &Server, method: reqwest::Method, key: &str) -> String {
    use object_store::signer::Signer;
    let v = s.send("PUT", "/apis/sts/token", None, None).await.ok(200);
    let c = &v["Credentials"];
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(c["EndpointURL"].as_str().unwrap().trim_end_matches('/'))
        .with_bucket_name("ims")
        .with_access_key_id(c["AccessKeyId"].as_str().unwrap())
        .with_secret_access_key(c["SecretAccessKey"].as_str().unwrap())
        .with_token(c["SessionToken"].as_str().unwrap())
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let url = store
        .signed_url(
            method,
            &object_store::path::Path::from(key),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    format!("{}?{}", url.path(), url.query().unwrap())
}

/// The header and idle timeouts are 1 s in the slow-transfer tests.
async fn quick_timeouts() -> (Server, String, String) {
    let s = with(builder(Db::Sqlite).await, "1", "1", "100")
        .start()
        .await;
    let [(_, api), (_, s3)] = ports(&s);
    (s, api, s3)
}

/// An upload to the S3 endpoint that lasts three times the header and idle timeouts completes
/// intact while it progresses; then the idle connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_outlasts_the_timeouts() {
    let (s, _, s3) = quick_timeouts().await;
    // 12 chunks of 64 KiB, one every 250 ms.
    let data: Vec<u8> = (0..12 * 65536u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let path = presigned(&s, reqwest::Method::PUT, "slow/upload").await;
    let mut c = TcpStream::connect(&s3).unwrap();
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nHost: {s3}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    let t = Instant::now();
    for chunk in data.chunks(65536) {
        std::thread::sleep(Duration::from_millis(250));
        c.write_all(chunk).unwrap();
    }
    let (status, body) = read_response(&mut c);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(t.elapsed() > Duration::from_secs(2));
    assert!(
        s.read_artifact("ims", "slow/upload") == data,
        "upload changed"
    );
    // The rules were in force on this connection: once idle, it is closed.
    assert!(closed_within(&mut c, Duration::from_secs(3)).is_some());
}

/// A download from the S3 endpoint read slowly for several times the timeouts completes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_outlasts_the_timeouts() {
    let (s, _, s3) = quick_timeouts().await;
    // Download: 3 MiB through a small receive buffer, 128 KiB every 100 ms.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    s.put_artifact("ims", "slow/download", &big);
    let path = presigned(&s, reqwest::Method::GET, "slow/download").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(65536).unwrap();
    let c = sock.connect(s3.parse().unwrap()).await.unwrap();
    let mut c = c.into_std().unwrap();
    c.set_nonblocking(false).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {s3}\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("download failed after {} bytes: {e}", got.len()),
        }
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
        if head_end.is_some_and(|h| got.len() >= h + 4 + big.len()) {
            break;
        }
    }
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(got.len() - at, big.len(), "download length");
    assert!(got[at..] == big[..], "download changed");
    assert!(t.elapsed() > Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(closed_within(&mut c, Duration::from_secs(3)).is_some());
}

/// A client that asks for a large response and then reads nothing (its receive window shut)
/// does not hold its connection: it is cut after the idle timeout, while a reader that reads
/// slowly (above) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_nobody_reads_is_cut_after_the_idle_timeout() {
    let (s, _, s3) = quick_timeouts().await;
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    s.put_artifact("ims", "unread/download", &big);
    let path = presigned(&s, reqwest::Method::GET, "unread/download").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let c = sock.connect(s3.parse().unwrap()).await.unwrap();
    let mut c = c.into_std().unwrap();
    c.set_nonblocking(false).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {s3}\r\n\r\n").unwrap();
    // Read nothing for a while: the server's writes stall on the shut window.
    std::thread::sleep(Duration::from_secs(4));
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still sending");
    }
    assert!(got < big.len(), "the whole response came ({got} bytes)");
}

/// A request body sent slowly to the API (for three times the timeouts) is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_outlasts_the_timeouts() {
    let (_s, api, _) = quick_timeouts().await;
    // A public key whose JSON body arrives a few bytes every 300 ms for 3 s.
    let key =
        serde_json::json!({"name": "slow", "public_key": crate::common::PUBLIC_KEY}).to_string();
    let mut c = TcpStream::connect(&api).unwrap();
    write!(
        c,
        "POST /v3/public-keys HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        key.len()
    )
    .unwrap();
    for part in key.as_bytes().chunks(key.len().div_ceil(10)) {
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(part).unwrap();
    }
    let (status, body) = read_response(&mut c);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert!(closed_within(&mut c, Duration::from_secs(3)).is_some());
}

/// `ims jobs logs --follow` polls the log (every second while nothing is new) on one kept-alive
/// connection: with a header timeout of 1 s and an idle timeout of 3 s it follows a job for
/// longer than both, without a dropped connection, every line once, until the job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_logs_follow_outlasts_the_timeouts() {
    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("job.key");
    std::fs::write(&key, KEY_HEX).unwrap();
    let s = with(builder(Db::Sqlite).await, "1", "3", "100")
        .env("IMS_JOB_TOKEN_KEY_FILE", key.to_str().unwrap())
        .start()
        .await;
    let link = s.put_image_artifacts("img");
    let img = s
        .post(
            "/v3/images",
            &serde_json::json!({"name": "i", "link": link}),
        )
        .await
        .ok(201);
    let pk = s
        .post(
            "/v3/public-keys",
            &serde_json::json!({"name": "k", "public_key": crate::common::PUBLIC_KEY}),
        )
        .await
        .ok(201);
    let job = s
        .post(
            "/v3/jobs",
            &serde_json::json!({"job_type": "customize", "artifact_id": img["id"],
                "public_key_id": pk["id"], "image_root_archive_name": "x"}),
        )
        .await
        .ok(201);
    let jid = job["id"].as_str().unwrap().to_string();
    let token = crate::common::job_token(KEY_HEX, &jid);
    let follow = crate::common::Cli::of(&s)
        .command(&["jobs", "logs", &jid, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A line every 1.5 s for 6 s: the follower waits a second between polls, two or three polls
    // per line, on the same connection.
    for seq in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = s
            .client
            .post(format!("{}/v3/jobs/{jid}/log?seq={seq}", s.url))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(format!("line {seq}\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    s.patch(
        &format!("/v3/jobs/{jid}"),
        &serde_json::json!({"status": "success"}),
    )
    .await
    .ok(200);
    let out = tokio::task::spawn_blocking(move || follow.wait_with_output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "line 0\nline 1\nline 2\nline 3\n", "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}
