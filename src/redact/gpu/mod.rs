//! The GPU backend (wgpu compute, `shaders/redact.wgsl`): same pixels as [`cpu`](super::cpu)
//! (within ±1 per channel: float rounding differs), many images per submission.
//!
//! One [`GpuRedactor`] owns a device, a queue and the three pipelines (`gather`, `reduce`,
//! `apply`), created once. A batch is planned by `pack` into chunks; each chunk's patches
//! (the regions plus the halo a blur reads) are uploaded in one write, processed in three
//! dispatches per layer for all images at once, and read back; only the regions are written into the frames. Two sets
//! of buffers alternate, so one chunk computes while the next is packed and uploaded and
//! the previous is written back; buffers are kept and grown, never re-created per call.
//! Chunks are sized from the device's limits, so large images and regions are split,
//! never refused.

pub(crate) mod pack;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use self::pack::{Chunk, ChunkLimits, ImageRef, Pass, Task};
use super::backend::{BatchImage, RedactError};
use super::{Params, Region};
use crate::image_io::Frame;

const SHADER: &str = include_str!("../../../shaders/redact.wgsl");
/// Upper bound of one buffer binding, whatever the device allows: two sets of buffers of
/// this size bound the GPU memory a redactor holds.
const MAX_BINDING_BYTES: u64 = 128 << 20;

/// A wgpu device with the redaction pipelines; `Send + Sync`, calls are serialised.
///
/// ```no_run
/// use obscura::redact::gpu::GpuRedactor;
/// let gpu = GpuRedactor::new()?;
/// println!("redacting on {} ({:?})", gpu.adapter_info().name, gpu.adapter_info().device_type);
/// # Ok::<(), obscura::redact::backend::RedactError>(())
/// ```
pub struct GpuRedactor {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    layout: wgpu::BindGroupLayout,
    gather: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    apply: wgpu::ComputePipeline,
    limits: ChunkLimits,
    uniform_align: u64,
    errors: Arc<Mutex<Vec<String>>>,
    slots: Mutex<[Slot; 2]>,
}

impl std::fmt::Debug for GpuRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRedactor").field("adapter", &self.info.name).field("limits", &self.limits).finish()
    }
}

impl GpuRedactor {
    /// Opens the preferred adapter (a discrete GPU before an integrated or software one).
    pub fn new() -> Result<Self, RedactError> {
        Self::with_adapter(Self::find_adapter()?)
    }

    /// The adapter [`GpuRedactor::new`] would use (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
    /// the other wgpu environment variables apply).
    pub fn find_adapter() -> Result<wgpu::Adapter, RedactError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| RedactError::NoAdapter(e.to_string()))
    }

    /// Opens a device on `adapter` and builds the pipelines.
    pub fn with_adapter(adapter: wgpu::Adapter) -> Result<Self, RedactError> {
        let info = adapter.get_info();
        let supported = adapter.limits();
        let binding = supported.max_storage_buffer_binding_size.min(supported.max_buffer_size).min(MAX_BINDING_BYTES);
        let required_limits = wgpu::Limits {
            max_storage_buffer_binding_size: binding,
            max_buffer_size: binding,
            ..wgpu::Limits::downlevel_defaults()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("obscura"),
            required_features: wgpu::Features::empty(),
            required_limits: required_limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| RedactError::Device { adapter: info.name.clone(), message: e.to_string() })?;
        // Errors are collected and turned into `Err` at the next check (never a panic).
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string())));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(format!("device lost ({reason:?}): {message}"))
        });

        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("redact.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only }, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("redact"),
            entries: &[
                storage(0, false),
                storage(1, false),
                storage(2, true),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(16),
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("redact"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (gather, reduce, apply) = (pipeline("gather"), pipeline("reduce"), pipeline("apply"));
        let limits = ChunkLimits { max_binding_bytes: binding, max_groups_per_dim: required_limits.max_compute_workgroups_per_dimension };
        let redactor = Self {
            uniform_align: required_limits.min_uniform_buffer_offset_alignment.max(16) as u64,
            device,
            queue,
            info,
            layout,
            gather,
            reduce,
            apply,
            limits,
            errors,
            slots: Mutex::new([Slot::default(), Slot::default()]),
        };
        redactor.check()?;
        Ok(redactor)
    }

    /// The adapter in use (name, backend, and whether it is a real GPU or a CPU emulation).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// True for software adapters (lavapipe, llvmpipe, WARP): they run the shaders on the
    /// CPU, no faster than the CPU backend.
    pub fn is_software_adapter(info: &wgpu::AdapterInfo) -> bool {
        info.device_type == wgpu::DeviceType::Cpu
    }

    /// Caps the chunk size below the device limits (tests use this to exercise splitting).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn set_chunk_limits(&mut self, max_binding_bytes: u64, max_groups_per_dim: u32) {
        self.limits = ChunkLimits {
            max_binding_bytes: max_binding_bytes.min(self.limits.max_binding_bytes),
            max_groups_per_dim: max_groups_per_dim.clamp(1, self.limits.max_groups_per_dim),
        };
    }

    /// Redacts one image in place.
    pub fn redact(&self, frame: &mut Frame, regions: &[Region], params: &Params) -> Result<(), RedactError> {
        self.redact_batch(&mut [BatchImage { frame, regions, params: *params }])
    }

    /// Redacts many images in as few submissions as the device limits allow. On `Err` the
    /// frames may be partly redacted and must be discarded.
    pub fn redact_batch(&self, batch: &mut [BatchImage<'_>]) -> Result<(), RedactError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.run(&mut slots, batch);
        if result.is_err() {
            // Leave no submission behind for the next call to mistake for its own.
            for slot in slots.iter_mut() {
                if slot.pending.take().is_some() {
                    let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
                    if let Some(readback) = &slot.readback {
                        readback.unmap();
                    }
                }
            }
        }
        result
    }

    fn run(&self, slots: &mut [Slot; 2], batch: &mut [BatchImage<'_>]) -> Result<(), RedactError> {
        let refs: Vec<ImageRef> = batch.iter().map(|b| ImageRef::new(b.frame, b.regions, b.params)).collect();
        for round in pack::rounds(&refs, &self.limits) {
            let mut jobs = Vec::new();
            for task in round {
                match task {
                    Task::Gpu(job) => jobs.push(job),
                    Task::Cpu { image, region } => {
                        let b = &mut batch[image];
                        super::cpu::redact_region(b.frame, &b.regions[region], region as u32, &b.params);
                    }
                }
            }
            // Tiles of one region all read the image as it was before that region, but
            // each writes where its neighbours read (the blur halo): their results are
            // held back until the whole round has run.
            let tiled = jobs.iter().any(|j| j.steps.iter().any(|s| s.write != refs[j.image].regions[s.region].rect));
            let mut held: Option<Vec<Held>> = tiled.then(Vec::new);
            // Two slots alternate: chunk i is packed and submitted while chunk i-1 runs.
            let mut order: Vec<usize> = Vec::new();
            for (i, chunk) in pack::chunks(jobs, &refs, &self.limits).into_iter().enumerate() {
                let s = i % 2;
                if slots[s].pending.is_some() {
                    self.finish(&mut slots[s], batch, held.as_mut())?;
                }
                self.submit(&mut slots[s], chunk, batch)?;
                order.push(s);
            }
            for s in order.into_iter().rev().take(2).collect::<Vec<_>>().into_iter().rev() {
                if slots[s].pending.is_some() {
                    self.finish(&mut slots[s], batch, held.as_mut())?;
                }
            }
            for h in held.into_iter().flatten() {
                let frame = &mut *batch[h.image].frame;
                let (stride, channels) = (frame.stride(), frame.channels as usize);
                let row_bytes = h.rect.w as usize * channels;
                for (k, y) in (h.rect.y..h.rect.y + h.rect.h).enumerate() {
                    frame.data[y as usize * stride + h.rect.x as usize * channels..][..row_bytes].copy_from_slice(&h.pixels[k * row_bytes..][..row_bytes]);
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), RedactError> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() { Ok(()) } else { Err(RedactError::Failed(std::mem::take(&mut *errors).join("; "))) }
    }

    fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
    }

    /// Grows the slot's buffers to hold `chunk` (never shrinks them).
    fn reserve(&self, slot: &mut Slot, pixels: u64, scratch: u64, words: u64, uniform: u64) {
        use wgpu::BufferUsages as U;
        let grow = |current: Option<&wgpu::Buffer>, need: u64| current.is_none_or(|b| b.size() < need);
        let size = |need: u64, limit: u64| need.max(256).next_power_of_two().min(limit.max(need));
        let limit = self.limits.max_binding_bytes;
        let mut changed = false;
        if grow(slot.pixels.as_ref(), pixels) {
            slot.pixels = Some(self.buffer("pixels", size(pixels, limit), U::STORAGE | U::COPY_DST | U::COPY_SRC));
            slot.readback = Some(self.buffer("readback", size(pixels, limit), U::MAP_READ | U::COPY_DST));
            changed = true;
        }
        if grow(slot.scratch.as_ref(), scratch) {
            slot.scratch = Some(self.buffer("scratch", size(scratch, limit), U::STORAGE));
            changed = true;
        }
        if grow(slot.words.as_ref(), words) {
            slot.words = Some(self.buffer("words", size(words, limit), U::STORAGE | U::COPY_DST));
            changed = true;
        }
        if grow(slot.uniform.as_ref(), uniform) {
            slot.uniform = Some(self.buffer("dispatch", size(uniform, u64::MAX), U::UNIFORM | U::COPY_DST));
            changed = true;
        }
        if changed || slot.bind_group.is_none() {
            fn entire(b: &Option<wgpu::Buffer>) -> wgpu::BindingResource<'_> {
                b.as_ref().expect("reserved above").as_entire_binding()
            }
            slot.bind_group = Some(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("redact"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: entire(&slot.pixels) },
                    wgpu::BindGroupEntry { binding: 1, resource: entire(&slot.scratch) },
                    wgpu::BindGroupEntry { binding: 2, resource: entire(&slot.words) },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: slot.uniform.as_ref().expect("reserved above"),
                            offset: 0,
                            size: wgpu::BufferSize::new(16),
                        }),
                    },
                ],
            }));
        }
    }

    /// Uploads a chunk's patches and work, records its dispatches and the read-back copy,
    /// submits, and asks for the read-back mapping.
    fn submit(&self, slot: &mut Slot, chunk: Chunk, batch: &[BatchImage<'_>]) -> Result<(), RedactError> {
        let pixel_bytes = chunk.pixel_count * 4;
        let uniform_bytes = chunk.dispatches.len() as u64 * self.uniform_align;
        self.reserve(slot, pixel_bytes, (chunk.scratch_floats * 4).max(16), chunk.words.len() as u64 * 4, uniform_bytes.max(16));

        // Patches → RGBA8 words (alpha 255 for RGB images).
        slot.upload.clear();
        slot.upload.reserve(pixel_bytes as usize);
        for job in &chunk.jobs {
            let frame = &*batch[job.image].frame;
            let (stride, channels) = (frame.stride(), frame.channels as usize);
            let p = job.patch;
            for y in p.y..p.y + p.h {
                let row = &frame.data[y as usize * stride + p.x as usize * channels..][..p.w as usize * channels];
                if channels == 4 {
                    slot.upload.extend_from_slice(row);
                } else {
                    row.chunks_exact(3).for_each(|px| slot.upload.extend_from_slice(&[px[0], px[1], px[2], 255]));
                }
            }
        }
        let mut uniform = vec![0u8; uniform_bytes as usize];
        for (i, d) in chunk.dispatches.iter().enumerate() {
            let words = [d.item_offset, d.count, d.groups.0, 0];
            uniform[i * self.uniform_align as usize..][..16].copy_from_slice(bytemuck::cast_slice(&words));
        }
        let (pixels, readback) = (slot.pixels.as_ref().expect("reserved"), slot.readback.as_ref().expect("reserved"));
        self.queue.write_buffer(pixels, 0, &slot.upload);
        self.queue.write_buffer(slot.words.as_ref().expect("reserved"), 0, bytemuck::cast_slice(&chunk.words));
        if !uniform.is_empty() {
            self.queue.write_buffer(slot.uniform.as_ref().expect("reserved"), 0, &uniform);
        }

        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("redact") });
        let bind_group = slot.bind_group.as_ref().expect("reserved");
        for (i, d) in chunk.dispatches.iter().enumerate() {
            // One pass per dispatch: a layer's gather must finish before its reduce and
            // apply, and an apply before the next layer's gather.
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(match d.pass {
                Pass::Gather => &self.gather,
                Pass::Reduce => &self.reduce,
                Pass::Apply => &self.apply,
            });
            pass.set_bind_group(0, bind_group, &[(i as u64 * self.uniform_align) as u32]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
        encoder.copy_buffer_to_buffer(pixels, 0, readback, 0, pixel_bytes);
        let index = self.queue.submit([encoder.finish()]);
        let (tx, rx) = mpsc::channel();
        readback.map_async(wgpu::MapMode::Read, 0..pixel_bytes, move |r| {
            let _ = tx.send(r);
        });
        slot.pending = Some(Pending { chunk, index, mapped: rx });
        Ok(())
    }

    /// Waits for the slot's submission and writes its regions into the frames, or into
    /// `held` to be written later.
    fn finish(&self, slot: &mut Slot, batch: &mut [BatchImage<'_>], mut held: Option<&mut Vec<Held>>) -> Result<(), RedactError> {
        let Pending { chunk, index, mapped } = slot.pending.take().expect("finish is called on a pending slot");
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| RedactError::Failed(format!("waiting for the GPU: {e}")))?;
        self.check()?;
        mapped
            .recv()
            .map_err(|_| RedactError::Failed("read-back mapping was dropped".into()))?
            .map_err(|e| RedactError::Failed(format!("read-back mapping failed: {e}")))?;
        let readback = slot.readback.as_ref().expect("reserved");
        {
            let view = readback
                .get_mapped_range(0..chunk.pixel_count * 4)
                .map_err(|e| RedactError::Failed(format!("read-back mapping failed: {e}")))?;
            let data: &[u8] = &view;
            for (job, &offset) in chunk.jobs.iter().zip(&chunk.patch_offsets) {
                let frame = &mut *batch[job.image].frame;
                let (stride, channels) = (frame.stride(), frame.channels as usize);
                let p = job.patch;
                for step in &job.steps {
                    let w = step.write;
                    let row_bytes = w.w as usize * channels;
                    let mut hold = held.as_ref().map(|_| vec![0u8; row_bytes * w.h as usize]);
                    for (k, y) in (w.y..w.y + w.h).enumerate() {
                        let src = &data[(offset as usize + (y - p.y) as usize * p.w as usize + (w.x - p.x) as usize) * 4..][..w.w as usize * 4];
                        let dst = match &mut hold {
                            Some(buf) => &mut buf[k * row_bytes..][..row_bytes],
                            None => &mut frame.data[y as usize * stride + w.x as usize * channels..][..row_bytes],
                        };
                        if channels == 4 {
                            dst.copy_from_slice(src);
                        } else {
                            dst.chunks_exact_mut(3).zip(src.chunks_exact(4)).for_each(|(d, s)| d.copy_from_slice(&s[..3]));
                        }
                    }
                    if let (Some(held), Some(pixels)) = (held.as_deref_mut(), hold) {
                        held.push(Held { image: job.image, rect: w, pixels });
                    }
                }
            }
        }
        readback.unmap();
        Ok(())
    }
}

/// Redacted pixels of one step, written into the frame when its round ends.
struct Held {
    image: usize,
    rect: crate::geometry::PixelRect,
    pixels: Vec<u8>,
}

/// One set of buffers and the submission using it.
#[derive(Default)]
struct Slot {
    pixels: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    scratch: Option<wgpu::Buffer>,
    words: Option<wgpu::Buffer>,
    uniform: Option<wgpu::Buffer>,
    bind_group: Option<wgpu::BindGroup>,
    /// Patch bytes staged for upload, kept to reuse its allocation.
    upload: Vec<u8>,
    pending: Option<Pending>,
}

struct Pending {
    chunk: Chunk,
    index: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
}
