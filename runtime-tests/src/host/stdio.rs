//! A component's stdout and stderr as `spin up` writes them (trigger/src/cli/stdio.rs
//! `ComponentStdioWriter`, factor-wasi/src/io.rs `PipedWriteStream`): each instance opens the
//! component's log file in the log directory (`<app>/.spin/logs/<component>_stdout.txt` and
//! `_stderr.txt` by default) for appending, with a second handle on it as Spin keeps one, and
//! every write the guest makes goes to that file and then to the runtime's stderr (every
//! component is followed by default), synchronously, under a mutex. What it costs Spin: two
//! file opens per instance and two write calls per line the app prints.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Where one of a component's streams goes: its log file, if the directory is set and the
/// file opened, then stderr.
pub struct ComponentOutput {
    file: Option<File>,
    /// Spin's second handle on the file (an async one it opens and does not write through).
    _second: Option<File>,
}

impl ComponentOutput {
    /// The `suffix` stream (`stdout` or `stderr`) of `component`, logged in `log_dir`. Spin fails
    /// the instance when the file cannot be opened; this host says so and writes to stderr only.
    pub fn open(log_dir: Option<&Path>, component: &str, suffix: &str) -> ComponentOutput {
        let Some(dir) = log_dir else { return ComponentOutput { file: None, _second: None } };
        let path = dir.join(format!("{component}_{suffix}.txt"));
        match File::options().create(true).append(true).open(&path) {
            Ok(file) => {
                let second = file.try_clone().ok();
                ComponentOutput { file: Some(file), _second: second }
            }
            Err(e) => {
                eprintln!("spin-host: cannot open log file {}: {e}", path.display());
                ComponentOutput { file: None, _second: None }
            }
        }
    }
}

impl Write for ComponentOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = match &mut self.file {
            Some(file) => file.write(buf)?,
            None => buf.len(),
        };
        io::stderr().write_all(&buf[..written])?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            file.flush()?;
        }
        io::stderr().flush()
    }
}

/// The guest's handle on a `ComponentOutput`: shared, since a composed component may ask for
/// the stream more than once, and written synchronously, as Spin's `PipedWriteStream` does.
#[derive(Clone)]
pub struct Piped(Arc<Mutex<ComponentOutput>>);

impl Piped {
    pub fn new(output: ComponentOutput) -> Piped {
        Piped(Arc::new(Mutex::new(output)))
    }

    fn with<T>(&self, f: impl FnOnce(&mut ComponentOutput) -> io::Result<T>) -> io::Result<T> {
        let mut output = self.0.lock().map_err(|_| io::Error::other("component output lock poisoned"))?;
        f(&mut output)
    }
}

impl OutputStream for Piped {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.with(|o| o.write_all(&bytes)).map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.with(|o| o.flush()).map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(1024 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for Piped {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Piped {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.with(|o| o.write(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.with(|o| o.flush()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Piped {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Piped {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
