//! raftsql's gRPC protocol: the code tonic and prost generate from `raftsql/v1/*.proto`.
#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("raftsql.v1");
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
