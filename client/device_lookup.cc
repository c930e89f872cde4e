#include "client/device_lookup.h"

#include <array>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/device_mapping.h"
#include "client/device_resources.h"
#include "client/device_status.h"
#include "client/device_tokens.h"
#include "client/device_versions.h"
#include "client/layer_mapping.h"
#include "common/dtype.h"
#include "common/lookup_plan.h"
#include "common/status_context.h"
#include "kernels/gpu.h"
#include "kernels/gpu_handles.h"

namespace engram {
namespace {

// Linking this file (engram::client_gpu) turns device lookups on.
[[maybe_unused]] const bool registered =
    (RegisterDeviceReads(&DeviceLookups::Create), true);

using Clock = std::chrono::steady_clock;

static_assert(kDeviceStatusWords == gpu::kStatusWords);

absl::StatusOr<LookupPlan> CheckOutput(const LayerLayout& layout,
                                       const DeviceLookupRequest& r) {
  LookupArgs args;
  args.layer_id = r.layer_id;
  args.num_ids = r.num_ids;
  args.output_dtype = r.output_dtype;
  args.out_bytes = r.out_bytes;
  args.id_form = r.id_form;
  args.head_begin = r.head_begin;
  args.head_end = r.head_end;
  return PlanLookup(layout, args);
}

}  // namespace

// What one published version holds on the device: its view and, on the
// zero-copy paths, the tables it maps. Destroyed only inside Close, with
// its device current and no launch left that could read it.
class CudaView final : public DeviceVersions::View {
 public:
  ~CudaView() override {
    mapping.Close();
    view.reset();
  }
  std::shared_ptr<const MappedVersion> mapped;  // what `mapping` points into
  DeviceMapping mapping;                        // what CUDA reads
  gpu::ViewHandle view;
};

// One layer on one device: its watch, view slot, the CUDA side of its
// versions (DeviceVersions keeps their lifecycle) and the launches. The
// watch thread applies updates; lookups read a snapshot; the janitor
// closes retired versions.
class DeviceLookups::LayerOnDevice final : public DeviceVersions::Device {
 public:
  using Current = DeviceVersions::Current;

  LayerOnDevice(int64_t layer_id, int device, const DeviceReadsEnv* env,
                std::chrono::milliseconds grace)
      : layer_id_(layer_id),
        device_(device),
        env_(env),
        versions_(
            this, [this](uint64_t version) { Release(version); }, grace) {}

  ~LayerOnDevice() override {
    if (watch_ != nullptr) watch_->StopUpdates();  // no Apply from here on
    // Kernels still reading must finish, and CUDA IPC mappings must be
    // closed, before the watch ends (the server then frees the memory).
    versions_.CloseAll();
    {
      MutexLock lock(&release_mu_);
      watch_.reset();
    }
    DeviceGuard guard(device_);
    {
      // A launch or a captured graph may still read a model's token map.
      MutexLock lock(&token_models_mu_);
      if (!token_models_.empty()) gpu::DeviceSynchronize().IgnoreError();
      token_models_.clear();
    }
    slot_.reset();
    default_status_.reset();
    ok_words_.reset();
    stream_.reset();
    pool_.Clear();
  }

  // Sets the layer up once (CUDA resources, the watch); later calls get
  // the first one's result. Called outside the lookups' map lock, so one
  // layer's first use never stalls lookups of the others.
  absl::Status EnsureInit() {
    MutexLock lock(&init_mu_);
    if (!init_done_) {
      init_status_ = Init();
      init_done_ = true;
    }
    return init_status_;
  }

  bool WaitReady(absl::Duration timeout) {
    return versions_.WaitReady(timeout);
  }
  Current Now() { return versions_.Now(); }
  std::string note() { return versions_.note(); }
  uint64_t* default_status() const { return default_status_.get(); }
  // Why token lookup `r`'s launch reported row `row` (a token outside the
  // model's map): its tokens read back and checked against the model.
  absl::Status ExplainBadToken(const DeviceLookupRequest& r, uint64_t row) {
    std::shared_ptr<const DeviceTokenModel> model;
    {
      MutexLock lock(&token_models_mu_);
      auto it = token_models_.find(Now().token_model);
      if (it != token_models_.end()) model = it->second;
    }
    const DeviceTokens& t = *r.tokens;
    std::vector<int64_t> tokens_copy, history_copy;
    absl::StatusOr<std::span<const int64_t>> tokens =
        HostView(t.tokens, t.batch * t.length, r.stream, &tokens_copy);
    absl::StatusOr<std::span<const int64_t>> history = HostView(
        t.history, t.batch * t.history_length, r.stream, &history_copy);
    if (model == nullptr || !tokens.ok() || !history.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", row, " of layer ", r.layer_id,
                       "'s token lookup hashes a token that is not a raw id "
                       "of its model's token map"));
    }
    return model->ExplainBadToken(r.layer_id, t, *tokens, *history);
  }

  // Why lookup `r` (fused ids, a head slice or entries) reported row
  // `row`: its ids read back and checked as the server's Lookup checks them.
  absl::Status ExplainBadId(const DeviceLookupRequest& r, uint64_t row) {
    const Current c = Now();
    std::vector<int64_t> copy;
    absl::StatusOr<std::span<const int64_t>> ids =
        HostView(r.ids, r.num_ids, r.stream, &copy);
    absl::StatusOr<LookupPlan> plan =
        c.known ? CheckOutput(*c.layout, r) : absl::StatusOr<LookupPlan>(c.why);
    if (ids.ok() && plan.ok()) {
      ResolvedIds resolved;
      absl::Status s = ResolveIds(*c.layout, *plan, ids->data(), &resolved);
      if (!s.ok()) return s;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("ids[", row, "] of layer ", r.layer_id,
                     "'s lookup was out of range when the GPU read it"));
  }

  // The janitor.
  void Tidy() {
    versions_.RetryPending();
    versions_.RetireDue(false);
  }

  // A lookup made ready to launch: a zero-copy gather (its ids staged in
  // pinned memory when they were pageable), or one for the RPC path.
  struct Planned {
    DevicePath path = DevicePath::kRpc;
    gpu::ViewGather gather;  // zero-copy paths
    // Ids, or tokens and history, copied for the launch.
    std::array<PinnedPool::Block*, 2> staged{};
    gpu::TokenHashArgs hash;                    // token lookups: gather.tokens
    std::shared_ptr<const LayerLayout> layout;  // the RPC path
  };

 private:
  absl::Status Init() {
    constexpr size_t kStatusBytes = gpu::kStatusWords * sizeof(uint64_t);
    absl::StatusOr<gpu::ViewSlotHandle> slot = gpu::NewViewSlot();
    if (!slot.ok()) return slot.status();
    slot_ = std::move(*slot);
    absl::StatusOr<gpu::DeviceMemory<uint64_t>> status =
        gpu::NewDeviceMemory<uint64_t>(kStatusBytes);
    if (!status.ok()) return status.status();
    default_status_ = std::move(*status);
    absl::StatusOr<gpu::PinnedMemory<uint64_t>> ok =
        gpu::NewPinnedMemory<uint64_t>(kStatusBytes);
    if (!ok.ok()) return ok.status();
    ok_words_ = std::move(*ok);
    for (int i = 0; i < gpu::kStatusWords; ++i) ok_words_.get()[i] = 0;
    ok_words_.get()[0] = gpu::kStatusOk;
    absl::StatusOr<gpu::StreamHandle> stream = gpu::NewStream();
    if (!stream.ok()) return stream.status();
    stream_ = std::move(*stream);
    LayerMappingWatch::Options options;
    options.gpu = true;
    auto watch = std::make_unique<LayerMappingWatch>(
        env_->channel, layer_id_, options,
        [this](MappingUpdate u) { versions_.Apply(std::move(u)); });
    std::vector<uint64_t> early;
    {
      MutexLock lock(&release_mu_);
      watch_ = std::move(watch);
      early.swap(early_releases_);
    }
    for (uint64_t v : early) watch_->Release(v);
    return absl::OkStatus();
  }

 public:
  // Checks `r` against the current layout and says how it will be served.
  absl::Status Plan(const DeviceLookupRequest& request, Planned* p) {
    const Current c = Now();
    if (c.state == MappingUpdate::kNotFound) return c.why;
    if (!c.known) return c.why;  // never reached the server
    const LayerLayout& layout = *c.layout;
    // A token lookup's rows: a row id per table per token.
    DeviceLookupRequest r = request;
    if (r.tokens != nullptr) {
      r.num_ids = r.tokens->batch * r.tokens->length * layout.num_heads();
    }
    absl::StatusOr<LookupPlan> plan = CheckOutput(layout, r);
    if (!plan.ok()) return plan.status();
    uint64_t* status = r.status != nullptr ? r.status : default_status_.get();
    if (c.state == MappingUpdate::kPresent && c.path != DevicePath::kRpc) {
      p->path = c.path;
      return r.tokens != nullptr
                 ? PlanTokens(r, c, *plan, status, p)
                 : PlanZeroCopy(r, layout, *plan, status, r.ids, p);
    }
    if (gpu::StreamCapturing(r.stream)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", r.layer_id, " has no zero-copy path to device ", device_,
          " (", note(), "); the RPC path cannot be captured in a CUDA graph"));
    }
    p->path = DevicePath::kRpc;
    p->layout = c.layout;
    return absl::OkStatus();
  }

  // After `p`'s launch was enqueued on `stream` (or abandoned: nullopt).
  void Launched(Planned& p, std::optional<gpu::Stream> stream) {
    for (PinnedPool::Block*& staged : p.staged) {
      if (staged == nullptr) continue;
      if (stream) {
        pool_.Release(staged, *stream);
      } else {
        pool_.Return(staged);
      }
      staged = nullptr;
    }
  }

  absl::Status LaunchRpc(const DeviceLookupRequest& r,
                         const LayerLayout& layout) {
    uint64_t* status = r.status != nullptr ? r.status : default_status_.get();
    std::vector<int64_t> ids_copy, tokens_copy, history_copy;
    absl::StatusOr<PinnedPool::Block*> block = pool_.Acquire(r.out_bytes);
    if (!block.ok()) return block.status();
    const std::span<uint8_t> rows(static_cast<uint8_t*>((*block)->data.get()),
                                  r.out_bytes);
    absl::Status s;
    if (r.tokens != nullptr) {
      const DeviceTokens& t = *r.tokens;
      absl::StatusOr<std::span<const int64_t>> tokens =
          HostView(t.tokens, t.batch * t.length, r.stream, &tokens_copy);
      absl::StatusOr<std::span<const int64_t>> history = HostView(
          t.history, t.batch * t.history_length, r.stream, &history_copy);
      s = !tokens.ok() ? tokens.status() : history.status();
      if (s.ok()) {
        const int64_t shape[] = {t.batch, t.length};
        s = env_->rpc_lookup_tokens(r.layer_id, *tokens, shape, *history, rows,
                                    r.output_dtype);
      }
    } else {
      absl::StatusOr<std::span<const int64_t>> ids =
          HostView(r.ids, r.num_ids, r.stream, &ids_copy);
      s = ids.status();
      if (s.ok()) {
        LookupOptions options;
        options.output_dtype = r.output_dtype;
        options.id_form = r.id_form;
        options.head_begin = r.head_begin;
        options.head_end = r.head_end;
        const int64_t columns =
            (r.head_end == 0 ? layout.num_heads() : r.head_end) - r.head_begin;
        const int64_t by_position[] = {
            r.num_ids / std::max<int64_t>(1, columns), 1, columns};
        const int64_t entries[] = {r.num_ids};
        s = env_->rpc_lookup(r.layer_id, *ids,
                             r.id_form == IdForm::kEntries
                                 ? std::span<const int64_t>(entries)
                                 : std::span<const int64_t>(by_position),
                             rows, options);
      }
    }
    if (s.ok()) {
      s = gpu::CopyToDeviceAsync(r.out, (*block)->data.get(), r.out_bytes,
                                 r.stream);
    }
    if (s.ok()) {
      s = gpu::CopyToDeviceAsync(status, ok_words_.get(),
                                 gpu::kStatusWords * sizeof(uint64_t),
                                 r.stream);
    }
    pool_.Release(*block, r.stream);
    return s;
  }

  // DeviceVersions::Device: opens `u` on this device and publishes its view
  // (on the watch thread or the janitor).
  DeviceVersions::Published Publish(const MappingUpdate& u) override {
    DeviceGuard guard(device_);
    DeviceVersions::Published out;
    auto next = std::make_unique<CudaView>();
    gpu::ViewSpec spec;
    if (u.state == MappingUpdate::kPresent) {
      const MappedVersion& v = *u.mapped;
      spec.heads = v.layout.num_heads();
      spec.dim = v.layout.embedding_dim;
      spec.dtype = static_cast<int>(v.layout.dtype);
      spec.quant_block = v.layout.quant.block;
      spec.version = v.version;
      spec.token_model = v.token_model;
      spec.vocab = v.layout.table_vocab_sizes;
      next->mapped = u.mapped;
      if (spec.heads > gpu::kMaxViewHeads) {
        out.note =
            absl::StrCat("zero-copy views hold up to ", gpu::kMaxViewHeads,
                         " heads; the layer has ", spec.heads);
        spec.heads = 0;
      } else {
        out.path = next->mapping.Open(v, device_, &spec, &out.note);
      }
      if (out.path == DevicePath::kRpc) {
        next->mapped.reset();  // nothing of it is read here
        spec.state = gpu::kViewUnavailable;
      }
    } else {
      spec.state = u.state == MappingUpdate::kNotFound ? gpu::kViewRemoved
                                                       : gpu::kViewUnavailable;
      out.note = std::string(u.why.message());
    }
    absl::StatusOr<gpu::ViewHandle> view = gpu::NewView(spec, stream_.get());
    out.error = view.status();
    if (view.ok()) {
      next->view = std::move(*view);
      out.error =
          gpu::PublishView(slot_.get(), next->view.get(), stream_.get());
    }
    // Unpublished, no launch has seen it: closed here, at once.
    if (out.error.ok()) out.view = std::move(next);
    return out;
  }

  // DeviceVersions::Device: launches that pinned these views may still run
  // (their grace has passed, but a synchronize makes sure) before anything
  // they read is unmapped. A failed synchronize means a broken context:
  // nothing reads any more.
  void Close(
      std::vector<std::unique_ptr<DeviceVersions::View>> views) override {
    if (views.empty()) return;
    DeviceGuard guard(device_);
    gpu::DeviceSynchronize().IgnoreError();
    views.clear();
  }

 private:
  // Tells the server it may free `version`. The watch's first update can
  // arrive before Init has stored the watch: such releases wait for it.
  void Release(uint64_t version) {
    MutexLock lock(&release_mu_);
    if (watch_ == nullptr) {
      early_releases_.push_back(version);
      return;
    }
    watch_->Release(version);
  }

  // `count` int64 at `data` (`what` of the request) where the launch can
  // read them: as given, or staged in pinned memory when pageable.
  absl::StatusOr<const int64_t*> Readable(const int64_t* data, int64_t count,
                                          const char* what,
                                          const DeviceLookupRequest& r,
                                          Planned* p) {
    if (count == 0) return data;
    const gpu::PointerInfo where = gpu::DescribePointer(data);
    if (where.device_memory && where.device != device_) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " are on device ", where.device,
                       ", the output on device ", device_));
    }
    if (where.device_memory || where.host_mapped) return data;
    if (gpu::StreamCapturing(r.stream)) {
      return absl::FailedPreconditionError(absl::StrCat(
          what,
          " in pageable host memory cannot be captured in a CUDA graph: "
          "put them in device or pinned memory"));
    }
    const size_t bytes = static_cast<size_t>(count) * sizeof(int64_t);
    absl::StatusOr<PinnedPool::Block*> block = pool_.Acquire(bytes);
    if (!block.ok()) return block.status();
    PinnedPool::Block*& slot = p->staged[p->staged[0] == nullptr ? 0 : 1];
    slot = *block;
    std::memcpy(slot->data.get(), data, bytes);
    return static_cast<const int64_t*>(slot->data.get());
  }

  // `count` int64 at `data` as host memory: device memory copied into
  // `copy` (through `stream`, waited for), host memory as it is.
  static absl::StatusOr<std::span<const int64_t>> HostView(
      const int64_t* data, int64_t count, gpu::Stream stream,
      std::vector<int64_t>* copy) {
    const size_t n = static_cast<size_t>(count);
    if (n == 0 || !gpu::DescribePointer(data).device_memory) {
      return std::span<const int64_t>(data, n);
    }
    copy->resize(n);
    if (absl::Status s = gpu::CopyToHostAsync(copy->data(), data,
                                              n * sizeof(int64_t), stream);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::StreamSynchronize(stream); !s.ok()) return s;
    return std::span<const int64_t>(*copy);
  }

  // A token lookup on a zero-copy path: the model the current version's
  // ids mean, the tokens where the launch reads them, the hash arguments.
  absl::Status PlanTokens(const DeviceLookupRequest& r, const Current& c,
                          const LookupPlan& plan, uint64_t* status,
                          Planned* p) {
    absl::StatusOr<std::shared_ptr<const DeviceTokenModel>> model =
        TokenModelFor(r.layer_id, c.token_model);
    if (!model.ok()) return model.status();
    if (absl::Status s = (*model)->CheckLayout(r.layer_id, *c.layout);
        !s.ok()) {
      return s;
    }
    const DeviceTokens& t = *r.tokens;
    const int max_history = (*model)->max_history();
    if (t.history_length > max_history) {
      return absl::InvalidArgumentError(absl::StrCat(
          "history holds ", t.history_length, " tokens per sequence; at most ",
          max_history, " (N - 1) are used"));
    }
    absl::StatusOr<const int64_t*> tokens =
        Readable(t.tokens, t.batch * t.length, "tokens", r, p);
    if (!tokens.ok()) return tokens.status();
    absl::StatusOr<const int64_t*> history =
        Readable(t.history, t.batch * t.history_length, "history", r, p);
    if (!history.ok()) return history.status();
    p->hash = (*model)->Args(t, *tokens, *history);
    if (absl::Status s =
            PlanZeroCopy(r, *c.layout, plan, status, /*ids=*/nullptr, p);
        !s.ok()) {
      return s;
    }
    p->gather.tokens = &p->hash;
    p->gather.token_model = (*model)->token_model();
    return absl::OkStatus();
  }

  // The device copy of the model whose token model id is `token_model`
  // (what the current version's ids mean), fetched the first time. Kept
  // until the layer's state ends: a captured graph points at it.
  absl::StatusOr<std::shared_ptr<const DeviceTokenModel>> TokenModelFor(
      int64_t layer_id, uint64_t token_model) {
    if (token_model == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", layer_id,
          " has no model hash: load it with a manifest whose \"model\" "
          "names config.json and the token map (docs/tokens.md)"));
    }
    if (token_model == kStaleTokenModel) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", layer_id,
          " was populated or replaced since its model hash was loaded, "
          "without one: load it with a manifest that names its model"));
    }
    MutexLock lock(&token_models_mu_);
    auto it = token_models_.find(token_model);
    if (it != token_models_.end()) return it->second;
    absl::StatusOr<std::unique_ptr<DeviceTokenModel>> fetched =
        DeviceTokenModel::Fetch(env_->channel, layer_id, env_->timeout);
    if (!fetched.ok()) return fetched.status();
    // The server may have moved on meanwhile: filed under what it is; the
    // launch reads only a version of the model it hashes with.
    std::shared_ptr<const DeviceTokenModel> model = *std::move(fetched);
    token_models_.emplace(model->token_model(), model);
    return model;
  }

  absl::Status PlanZeroCopy(const DeviceLookupRequest& r,
                            const LayerLayout& layout, const LookupPlan& plan,
                            uint64_t* status, const int64_t* given_ids,
                            Planned* p) {
    if (plan.dequantizes() && !gpu::CanDequantizeBlock(layout.quant.block)) {
      return absl::UnimplementedError(absl::StrCat(
          "layer ", r.layer_id, "'s quantization block ", layout.quant.block,
          " is not dequantized on the GPU (blocks of 16, 32, 64 or 128 are); "
          "ask for its uint8 rows"));
    }
    const int64_t* ids = nullptr;
    if (given_ids != nullptr) {
      absl::StatusOr<const int64_t*> readable =
          Readable(given_ids, r.num_ids, "ids", r, p);
      if (!readable.ok()) return readable.status();
      ids = *readable;
    }
    gpu::ViewGather& g = p->gather;
    g.slot = slot_.get();
    g.ids = ids;
    g.num_ids = r.num_ids;
    g.heads = layout.num_heads();
    g.dim = layout.embedding_dim;
    g.in_dtype = static_cast<int>(layout.dtype);
    g.out_dtype = static_cast<int>(plan.out_dtype);
    g.quant_block = layout.quant.block;
    g.dequantize = plan.dequantizes();
    if (!plan.plain) {
      const bool entries = plan.id_form == IdForm::kEntries;
      g.form.id_form = entries                          ? gpu::kViewEntries
                       : plan.id_form == IdForm::kFused ? gpu::kViewFused
                                                        : gpu::kViewPerHead;
      g.form.head_begin = static_cast<int32_t>(plan.head_begin);
      g.form.head_end = static_cast<int32_t>(plan.head_end);
      g.form.columns = entries ? 1 : static_cast<int32_t>(plan.shape.heads);
    }
    g.out = static_cast<uint8_t*>(r.out);
    g.status = status;
    return absl::OkStatus();
  }

  const int64_t layer_id_;
  const int device_;
  const DeviceReadsEnv* const env_;
  // Set once by Init; freed by the destructor with the device current.
  gpu::ViewSlotHandle slot_;
  gpu::DeviceMemory<uint64_t> default_status_;
  gpu::PinnedMemory<uint64_t> ok_words_;  // {kStatusOk, 0, 0}
  gpu::StreamHandle stream_;              // publishes views
  PinnedPool pool_;
  DeviceVersions versions_;
  Mutex init_mu_;
  bool init_done_ ABSL_GUARDED_BY(init_mu_) = false;
  absl::Status init_status_ ABSL_GUARDED_BY(init_mu_);
  Mutex release_mu_;
  std::vector<uint64_t> early_releases_ ABSL_GUARDED_BY(release_mu_);
  // By token model id; never dropped while the layer's state lives.
  Mutex token_models_mu_;
  std::map<uint64_t, std::shared_ptr<const DeviceTokenModel>> token_models_
      ABSL_GUARDED_BY(token_models_mu_);
  // Ended by the destructor only after every view is closed: its end
  // lets the server free the versions. Set once by Init.
  std::unique_ptr<LayerMappingWatch> watch_;
};

std::unique_ptr<DeviceReads> DeviceLookups::Create(DeviceReadsEnv env) {
  return std::make_unique<DeviceLookups>(std::move(env), Options{});
}

DeviceLookups::DeviceLookups(DeviceReadsEnv env, Options options)
    : env_(std::move(env)), options_(options) {
  janitor_.Start(std::chrono::milliseconds(200),
                 PeriodicThread::First::kAfterOnePeriod,
                 [this](const std::stop_token&) {
                   Tidy();
                   return true;
                 });
}

DeviceLookups::~DeviceLookups() {
  janitor_.Stop();
  std::map<std::pair<int64_t, int>, std::shared_ptr<LayerOnDevice>> layers;
  {
    MutexLock lock(&mu_);
    layers.swap(layers_);
  }
  layers.clear();  // each synchronizes its device and unmaps
}

void DeviceLookups::Tidy() {
  std::vector<std::shared_ptr<LayerOnDevice>> layers;
  {
    MutexLock lock(&mu_);
    for (auto& [key, layer] : layers_) layers.push_back(layer);
  }
  for (auto& layer : layers) layer->Tidy();
}

absl::StatusOr<std::shared_ptr<DeviceLookups::LayerOnDevice>>
DeviceLookups::Get(int64_t layer_id, int device, bool create) {
  std::shared_ptr<LayerOnDevice> layer;
  {
    MutexLock lock(&mu_);
    auto it = layers_.find({layer_id, device});
    if (it != layers_.end()) {
      layer = it->second;
    } else if (!create) {
      return nullptr;
    } else {
      layer = std::make_shared<LayerOnDevice>(layer_id, device, &env_,
                                              options_.retire_grace);
      layers_[{layer_id, device}] = layer;
    }
  }
  if (absl::Status s = layer->EnsureInit(); !s.ok()) {
    MutexLock lock(&mu_);  // a later call tries again
    auto it = layers_.find({layer_id, device});
    if (it != layers_.end() && it->second == layer) layers_.erase(it);
    return s;
  }
  if (!layer->WaitReady(env_.timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the server did not describe layer ", layer_id, " (WatchLayer) within ",
        absl::FormatDuration(env_.timeout)));
  }
  return layer;
}

absl::Status DeviceLookups::Lookup(const DeviceLookupRequest& r,
                                   DevicePath* path) {
  return LookupMany(std::span<const DeviceLookupRequest>(&r, 1),
                    path == nullptr ? std::span<DevicePath>()
                                    : std::span<DevicePath>(path, 1));
}

absl::Status DeviceLookups::LookupMany(
    std::span<const DeviceLookupRequest> requests,
    std::span<DevicePath> paths) {
  if (requests.empty()) {
    return absl::InvalidArgumentError("no device lookups to make");
  }
  const bool one = requests.size() == 1;
  auto which = [one](size_t i) {
    return one ? std::string() : absl::StrCat("lookup ", i, ": ");
  };
  int device = -1;
  for (size_t i = 0; i < requests.size(); ++i) {
    const DeviceLookupRequest& r = requests[i];
    if (r.out == nullptr || r.out_bytes == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(which(i), "a device lookup needs out and out_bytes"));
    }
    if (r.tokens != nullptr) {
      const DeviceTokens& t = *r.tokens;
      if (r.ids != nullptr || r.num_ids != 0 || r.id_form != IdForm::kPerHead ||
          r.head_begin != 0 || r.head_end != 0 || t.tokens == nullptr ||
          t.batch <= 0 || t.length <= 0 || t.history_length < 0 ||
          (t.history_length > 0 && t.history == nullptr)) {
        return absl::InvalidArgumentError(absl::StrCat(
            which(i),
            "a token lookup needs tokens [batch > 0, length > 0], history "
            "when history_length > 0, and no ids (nor an id form or head "
            "slice: it reads every head)"));
      }
    } else if (r.ids == nullptr || r.num_ids <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          which(i), "a device lookup needs ids and num_ids > 0 (or tokens)"));
    }
    if (r.stream != requests[0].stream) {
      return absl::InvalidArgumentError(
          absl::StrCat(which(i), "the lookups of one call share one stream"));
    }
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const DeviceLookupRequest& r = requests[i];
    const gpu::PointerInfo out = gpu::DescribePointer(r.out);
    if (!out.device_memory) {
      return absl::InvalidArgumentError(absl::StrCat(
          which(i),
          "out must be CUDA device memory (cudaMalloc, or a framework's CUDA "
          "tensor)"));
    }
    if (i > 0 && out.device != device) {
      return absl::InvalidArgumentError(absl::StrCat(
          which(i), "out is on device ", out.device, ", lookup 0's on device ",
          device, ": the lookups of one call write to one device"));
    }
    device = out.device;
    for (size_t j = 0; j < i; ++j) {
      if (r.status == nullptr && requests[j].status == nullptr &&
          requests[j].layer_id == r.layer_id) {
        return absl::InvalidArgumentError(absl::StrCat(
            "lookups ", j, " and ", i, " are both of layer ", r.layer_id,
            " without status words of their own: give them `status`"));
      }
    }
  }
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  const gpu::Stream stream = requests[0].stream;
  std::vector<std::shared_ptr<LayerOnDevice>> layers(requests.size());
  std::vector<LayerOnDevice::Planned> plans(requests.size());
  std::vector<gpu::ViewGather> gathers;
  gathers.reserve(requests.size());
  absl::Status status;
  for (size_t i = 0; i < requests.size() && status.ok(); ++i) {
    auto layer = Get(requests[i].layer_id, device, /*create=*/true);
    if (!layer.ok()) {
      status = layer.status();
      break;
    }
    layers[i] = *std::move(layer);
    status = layers[i]->Plan(requests[i], &plans[i]);
    if (status.ok() && plans[i].path != DevicePath::kRpc) {
      gathers.push_back(plans[i].gather);
    }
    if (!status.ok() && !one) {
      status = WithContext(status, "lookup ", i);
    }
  }
  if (status.ok() && !gathers.empty()) {
    status = gpu::LaunchViewGathers(gathers.data(), gathers.size(), stream);
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    if (layers[i] == nullptr) continue;
    layers[i]->Launched(plans[i],
                        status.ok() ? std::optional(stream) : std::nullopt);
  }
  if (!status.ok()) return status;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (i < paths.size()) paths[i] = plans[i].path;
    if (plans[i].path != DevicePath::kRpc) continue;
    if (absl::Status s = layers[i]->LaunchRpc(requests[i], *plans[i].layout);
        !s.ok()) {
      return one ? s : WithContext(s, "lookup ", i);
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceLookups::Result(const DeviceLookupRequest& r) {
  const gpu::PointerInfo out = gpu::DescribePointer(r.out);
  if (!out.device_memory) {
    return absl::InvalidArgumentError("out must be CUDA device memory");
  }
  DeviceGuard guard(out.device);
  auto layer = Get(r.layer_id, out.device, /*create=*/false);
  if (!layer.ok()) return layer.status();
  if (*layer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("no device lookup of layer ", r.layer_id,
                     " was made on device ", out.device));
  }
  const uint64_t* status =
      r.status != nullptr ? r.status : (*layer)->default_status();
  uint64_t words[gpu::kStatusWords] = {};
  if (absl::Status s =
          gpu::CopyToHostAsync(words, status, sizeof(words), r.stream);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = gpu::StreamSynchronize(r.stream); !s.ok()) return s;
  const uint64_t code = words[0];
  const LayerOnDevice::Current c = (*layer)->Now();
  if (std::optional<absl::Status> fixed =
          StatusOfCode(code, r.layer_id, out.device, (*layer)->note())) {
    return *fixed;
  }
  if (r.tokens != nullptr) return (*layer)->ExplainBadToken(r, code);
  if (r.id_form != IdForm::kPerHead || r.head_begin != 0 || r.head_end != 0) {
    return (*layer)->ExplainBadId(r, code);
  }
  const int heads = c.known ? c.layout->num_heads() : 0;
  return absl::InvalidArgumentError(absl::StrCat(
      "ids[", code, "] is out of range for head ",
      heads > 0 ? static_cast<int64_t>(code % heads) : -1, " of layer ",
      r.layer_id,
      heads > 0 ? absl::StrCat(" (", c.layout->table_vocab_sizes[code % heads],
                               " rows)")
                : ""));
}

absl::StatusOr<DevicePath> DeviceLookups::Prepare(int64_t layer_id,
                                                  int device) {
  if (device < 0) device = gpu::CurrentDevice();
  std::string why;
  if (device < 0 || gpu::DeviceCount(&why) == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA device for device lookups: ", why.empty() ? "none" : why));
  }
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  auto layer = Get(layer_id, device, /*create=*/true);
  if (!layer.ok()) return layer.status();
  const LayerOnDevice::Current c = (*layer)->Now();
  if (c.state == MappingUpdate::kNotFound) return c.why;
  return c.path;
}

std::string DeviceLookups::Note(int64_t layer_id, int device) {
  if (device < 0) device = gpu::CurrentDevice();
  MutexLock lock(&mu_);
  auto it = layers_.find({layer_id, device});
  return it == layers_.end() ? "" : it->second->note();
}

}  // namespace engram
