//! HTTP/1 connection framing after an answer given without reading the request body.
//!
//! Many requests are refused before their body is read: a bad signature, no such bucket or
//! upload, a key that is not allowed. hyper sends such an answer without `100 Continue` and
//! without `Connection: close`, and only then looks at the unread body: it takes what has
//! arrived of it and keeps the connection if that completes the body, else closes it. Clients
//! that send `Expect: 100-continue` (botocore does for `PutObject` and `UploadPart`) do not send
//! the body after a final answer (RFC 9110 §10.1.1) and reuse the connection. If their next
//! request is there before hyper looks (a busy server), hyper takes its first `Content-Length`
//! bytes as the refused request's body and parses the rest as a request: `PUT` becomes method
//! `UT`, answered `SignatureDoesNotMatch` (`NotImplemented` when unsigned).
//!
//! RFC 9110 §10.1.1 asks a server that answers before reading the whole body to say whether it
//! will close the connection. [`CloseUnreadBodies`] does: an HTTP/1 answer to a request whose
//! body was not read to its end carries `Connection: close`, hyper closes the connection after
//! it, and the client opens a new one for its next request.

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{CONNECTION, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use s3s::service::S3Service;
use s3s::{HttpError, HttpResponse};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// The endpoint as hyper serves it: [`S3Service`], plus `Connection: close` on HTTP/1 answers
/// given before the request body was read to its end.
#[derive(Clone)]
pub(crate) struct CloseUnreadBodies(pub(crate) S3Service);

impl hyper::service::Service<http::Request<Incoming>> for CloseUnreadBodies {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = BoxFuture<'static, Result<HttpResponse, HttpError>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        // HTTP/2 frames every body on its own stream: an unread one does not touch the next.
        if req.version() >= http::Version::HTTP_2 {
            return hyper::service::Service::call(&self.0, req);
        }
        let read = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let req = req.map(|body| {
            s3s::Body::http_body(Tracked {
                inner: body,
                read: read.clone(),
            })
        });
        let svc = self.0.clone();
        Box::pin(async move {
            let mut resp = svc.call(req).await?;
            if !read.load(Ordering::Acquire) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(None) => true,
            // The last bytes of a `Content-Length` body: the reader need not poll again.
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if end {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
