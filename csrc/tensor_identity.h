// Which tensor, and which contents, a cached derivative was made from: the
// key of the caches that keep work done on a tensor across operator calls
// (packed weights, expanded length plans). Host code only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <optional>

namespace seqcls_fast {

// A tensor seen through a weak reference, at one version of its contents. It
// matches the same live tensor while autograd's version counter says nothing
// wrote to it; a write the counter does not see (through .data, or through
// memory shared with NumPy) is not seen here either. The data pointer and
// element count guard against a new tensor reusing a freed one's address.
class TensorIdentity {
 public:
  // The identity of `t`, or none for a tensor without a version counter
  // (made under inference_mode): such a tensor is never cached.
  static std::optional<TensorIdentity> of(const at::Tensor& t) {
    if (t.is_inference()) return std::nullopt;
    return TensorIdentity(t);
  }

  bool matches(const at::Tensor& t) const {
    return weak_.lock().get() == t.unsafeGetTensorImpl() && !t.is_inference() &&
           version_ == t._version() && data_ == t.const_data_ptr() && numel_ == t.numel();
  }

  // The tensor is gone: whatever was cached for it can go too.
  bool expired() const { return weak_.expired(); }

 private:
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  explicit TensorIdentity(const at::Tensor& t)
      : weak_(t.getIntrusivePtr()), version_(t._version()), data_(t.const_data_ptr()),
        numel_(t.numel()) {}

  WeakImpl weak_;
  uint32_t version_;
  const void* data_;
  int64_t numel_;
};

}  // namespace seqcls_fast
