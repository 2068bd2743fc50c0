// Which kernels this build of the extension registered, for Python to read
// without private dispatcher APIs: every binding file notes the (op, dispatch
// key) pairs it registers with a static KernelNote next to its
// TORCH_LIBRARY_IMPL block, and torch.ops.rlsignals.registered_kernels()
// (schema.cpp) returns them as "op:KEY" strings, e.g. "unit_sums:CPU".
#pragma once
#include <string>
#include <vector>

namespace rlsignals {

// One list per loaded library (an inline function's static is shared by all
// translation units of the .so); filled while the library loads.
inline std::vector<std::string>& kernel_registry() {
  static std::vector<std::string> notes;
  return notes;
}

struct KernelNote {
  KernelNote(const char* op, const char* key) { kernel_registry().push_back(std::string(op) + ":" + key); }
};

}  // namespace rlsignals
