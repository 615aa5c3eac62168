//! raftsql's gRPC protocol: the code tonic and prost generate from `raftsql/v1/*.proto`, and
//! the little that both ends of it share: the vocabulary [`Value`] and [`Consistency`] (in
//! `value`, converted to and from the messages in [`convert`] only) and [`sql::is_read_only`]
//! (which SQL text is a read).
#![allow(clippy::all)]

pub mod channel;
pub mod convert;
pub mod sql;
mod value;

pub use value::{Consistency, Value};

pub mod v1 {
    tonic::include_proto!("raftsql.v1");
}

/// The encoded `FileDescriptorSet` of `raftsql/v1/*.proto` (written by build.rs): what server
/// reflection hands to tools such as grpcurl, so they need no copy of the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raftsql_descriptor.bin"));

/// A failed call's message and causes on one line, each once: tonic reports a failed dial as a
/// status whose message names the step ("tcp connect error", "transport error") and whose
/// source chain ends in the cause ("Connection refused", "invalid peer certificate:
/// UnknownIssuer"). Used by the nodes' logs and errors and by the client library.
pub fn status_text(s: &tonic::Status) -> String {
    let mut text = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(cause) = source {
        let t = cause.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = cause.source();
    }
    text
}

/// tonic's prost codec, except that a message that does not decode is `InvalidArgument`: what
/// a caller sent is wrong (e.g. a `string` field holding invalid UTF-8), not the server.
pub mod codec {
    use std::marker::PhantomData;
    use tonic::codec::{BufferSettings, DecodeBuf};
    use tonic::Status;

    #[derive(Debug, Clone)]
    pub struct Codec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Codec(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = tonic_prost::ProstEncoder<T>;
        type Decoder = Decoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::default()
        }

        fn decoder(&mut self) -> Self::Decoder {
            Decoder(tonic_prost::ProstDecoder::default())
        }
    }

    #[derive(Debug, Clone)]
    pub struct Decoder<U>(tonic_prost::ProstDecoder<U>);

    impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|s| {
                Status::invalid_argument(format!("the message does not decode: {}", s.message()))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
