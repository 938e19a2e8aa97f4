//! Malformed line protocol, remote write and import (JSON lines) bodies sent to a real
//! cluster, through a control node and a worker: each gets a 400 in its protocol's error
//! shape, naming what is wrong, and nothing of any of them is stored; a well-formed body after
//! them is stored whole.

mod common;

use std::io::Write as _;

use common::{DevCluster, TOKEN};
use raftmetrics_server::decode::remote_write::{encode, proto};
use serde_json::Value;

/// Sends `body` to `url` with `headers`, answers the status and the JSON body.
async fn post(c: &DevCluster, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut request = c
        .http
        .post(url)
        .header("Authorization", format!("Token {TOKEN}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.body(body).send().await.expect("an answer");
    (resp.status().as_u16(), common::json_of(resp).await)
}

/// What is wrong with a body, the body, and its headers.
type BadBody = (&'static str, Vec<u8>, Vec<(&'static str, &'static str)>);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn series(name: &str, value: f64) -> proto::TimeSeries {
    proto::TimeSeries {
        labels: vec![
            proto::Label {
                name: "__name__".into(),
                value: name.into(),
            },
            proto::Label {
                name: "job".into(),
                value: "errors".into(),
            },
        ],
        samples: vec![proto::Sample {
            value,
            timestamp: 1_705_708_800_000,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_whole_in_their_protocol_s_shape() {
    let c = DevCluster::start(3, 3, 8, &[]).await;
    let lines: Vec<BadBody> = vec![
        (
            "a string field",
            b"err_m,h=a f=\"text\" 1\n".to_vec(),
            vec![],
        ),
        ("no fields", b"err_m,h=a 1\n".to_vec(), vec![]),
        ("a field without a value", b"err_m f= 1\n".to_vec(), vec![]),
        (
            "a trailing backslash",
            b"err_m,h=a\\ f=1 1\n".to_vec(),
            vec![],
        ),
        ("an unterminated quote", b"err_m f=\"x 1\n".to_vec(), vec![]),
        ("a bad integer", b"err_m f=12x 1\n".to_vec(), vec![]),
        ("NaN", b"err_m f=NaN 1\n".to_vec(), vec![]),
        (
            "a timestamp out of range",
            b"err_m f=1 99999999999999999999\n".to_vec(),
            vec![],
        ),
        ("a tag without a value", b"err_m,h f=1 1\n".to_vec(), vec![]),
        // A good line before a bad one: the request is refused whole.
        (
            "one bad line of two",
            b"err_m f=1 1\nerr_m f=\"x\" 2\n".to_vec(),
            vec![],
        ),
        (
            "truncated gzip",
            gzip(b"err_m f=1 1\n")[..12].to_vec(),
            vec![("Content-Encoding", "gzip")],
        ),
        // 200 MB of zeros, a few hundred kilobytes compressed: refused at the body limit.
        (
            "a gzip bomb",
            gzip(&vec![b'0'; 200 << 20]),
            vec![("Content-Encoding", "gzip")],
        ),
        (
            "an unknown encoding",
            b"err_m f=1 1\n".to_vec(),
            vec![("Content-Encoding", "br")],
        ),
    ];
    let bodies_ok = gzip(b"err_ok,h=a f=1 1\nerr_ok,h=b f=2i 2\n");
    let nodes = [c.url(""), c.worker_url(1, "")];
    for base in &nodes {
        for path in [
            "/write?precision=s",
            "/api/v2/write?org=o&bucket=b&precision=s",
        ] {
            for (what, body, headers) in &lines {
                let (status, doc) = post(&c, &format!("{base}{path}"), headers, body.clone()).await;
                assert_eq!(status, 400, "{what} at {base}{path}: {doc}");
                assert_eq!(doc["code"], "invalid", "{what}: {doc}");
                let message = doc["message"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{what}: {doc}");
                if !what.contains("gzip") && !what.contains("encoding") {
                    assert!(message.contains("line "), "{what} names no line: {doc}");
                }
            }
            // An unknown parameter.
            let (status, doc) = post(
                &c,
                &format!("{base}{path}&bogus=1"),
                &[],
                b"err_m f=1 1\n".to_vec(),
            )
            .await;
            assert_eq!(status, 400, "{doc}");
        }
        // Remote write.
        let good = encode(&proto::WriteRequest {
            timeseries: vec![series("err_rw", 1.0)],
            ..Default::default()
        });
        let mut lying = proto::WriteRequest {
            timeseries: vec![series("err_rw", 1.0)],
            ..Default::default()
        };
        let mut raw = prost::Message::encode_to_vec(&lying);
        // The first series' length prefix claims far more bytes than follow.
        raw[1] = 0x7f;
        let lying_body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        lying.timeseries[0].labels.remove(0);
        let remote: Vec<(&str, Vec<u8>)> = vec![
            ("not snappy", b"hello, this is not snappy".to_vec()),
            ("truncated snappy", good[..good.len() / 2].to_vec()),
            ("a lying protobuf length", lying_body),
            ("a series without __name__", encode(&lying)),
            (
                "a declared length over the limit",
                vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0],
            ),
        ];
        for (what, body) in remote {
            let (status, doc) = post(
                &c,
                &format!("{base}/api/v1/write"),
                &[
                    ("Content-Encoding", "snappy"),
                    ("Content-Type", "application/x-protobuf"),
                ],
                body,
            )
            .await;
            assert_eq!(status, 400, "{what} at {base}: {doc}");
            assert_eq!(doc["status"], "error", "{what}: {doc}");
            assert_eq!(doc["errorType"], "bad_data", "{what}: {doc}");
        }
        // Import (JSON lines in the export's shape).
        let ok_line = r#"{"metric":{"__name__":"err_imp","h":"a"},"values":[1,2],"timestamps":[1705708800000,1705708801000]}"#;
        let imports: Vec<BadBody> = vec![
            ("no __name__", br#"{"metric":{"h":"a"},"values":[1],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("more values than timestamps", br#"{"metric":{"__name__":"err_imp"},"values":[1,2],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("a string value", br#"{"metric":{"__name__":"err_imp"},"values":["1"],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("a value out of range", br#"{"metric":{"__name__":"err_imp"},"values":[1e999],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("a label twice", br#"{"metric":{"__name__":"err_imp","h":"a","h":"b"},"values":[1],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("a bad metric name", br#"{"metric":{"__name__":"err imp"},"values":[1],"timestamps":[1705708800000]}"#.to_vec(), vec![]),
            ("an export's error line", br#"{"error":"partition 3 could not be read"}"#.to_vec(), vec![]),
            ("a truncated line", format!("{ok_line}\n{}", &ok_line[..40]).into_bytes(), vec![]),
            ("one bad line of two", format!("{ok_line}\nnot json").into_bytes(), vec![]),
            (
                "truncated gzip",
                gzip(ok_line.as_bytes())[..12].to_vec(),
                vec![("Content-Encoding", "gzip")],
            ),
            (
                "a gzip bomb",
                gzip(&vec![b' '; 200 << 20]),
                vec![("Content-Encoding", "gzip")],
            ),
        ];
        for (what, body, headers) in &imports {
            let (status, doc) =
                post(&c, &format!("{base}/api/v1/import"), headers, body.clone()).await;
            assert_eq!(status, 400, "{what} at {base}: {doc}");
            assert_eq!(doc["status"], "error", "{what}: {doc}");
            assert_eq!(doc["errorType"], "bad_data", "{what}: {doc}");
            let error = doc["error"].as_str().unwrap_or_default();
            if !what.contains("gzip") {
                assert!(error.contains("line "), "{what} names no line: {doc}");
            }
        }
        let (status, doc) = post(
            &c,
            &format!("{base}/api/v1/import?precision=ns"),
            &[],
            ok_line.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{doc}");
        let (status, doc) = post(
            &c,
            &format!("{base}/api/v1/import"),
            &[("Content-Encoding", "gzip")],
            gzip(ok_line.as_bytes()),
        )
        .await;
        assert_eq!(status, 204, "{doc}");
        // Well-formed bodies after all of them are stored.
        let (status, doc) = post(
            &c,
            &format!("{base}/write?precision=s"),
            &[("Content-Encoding", "gzip")],
            bodies_ok.clone(),
        )
        .await;
        assert_eq!(status, 204, "{doc}");
        let (status, doc) = post(
            &c,
            &format!("{base}/api/v1/write"),
            &[("Content-Encoding", "snappy")],
            good,
        )
        .await;
        assert_eq!(status, 204, "{doc}");
    }
    // Nothing of the refused bodies is stored; the good ones are, once per node they went to
    // (each was a new batch).
    for (metric, want) in [
        ("err_m_f", 0u64),
        ("err_ok_f", 4),
        ("err_rw", 2),
        ("err_imp", 4),
    ] {
        let (status, doc) = c
            .get_json(&c.url(&format!(
                "/aggregate?metric={metric}&agg=count&consistency=strong"
            )))
            .await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["is_partial"], false, "{doc}");
        assert_eq!(
            doc["aggregations"]["count"].as_u64().unwrap_or(0),
            want,
            "{metric}: {doc}"
        );
    }
}
