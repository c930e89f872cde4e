#include "common/malloc_tuning.h"

#include <cstdlib>  // defines __GLIBC__ on glibc systems; checked below

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace engram {

void TuneMallocForLargeMessages() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

}  // namespace engram
