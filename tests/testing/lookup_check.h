// Lookups checked byte for byte against the tables they were populated
// from: the integration, recovery and soak tests' one way to read.
#ifndef ENGRAM_TESTS_TESTING_LOOKUP_CHECK_H_
#define ENGRAM_TESTS_TESTING_LOOKUP_CHECK_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "tests/testing/random_layer.h"

namespace engram::testing {

// Looks up random [batch, length, H] ids of layer `id` through `client`;
// DATA_LOSS when any byte differs from `tables`, else the lookup's status.
inline absl::Status LookupExact(Client& client, int64_t id,
                                const LayerLayout& layout,
                                const std::vector<std::vector<uint8_t>>& tables,
                                int64_t batch, int64_t length, uint32_t seed) {
  std::vector<int64_t> ids = RandomIds(layout, batch, length, seed);
  std::vector<uint8_t> want =
      ReferenceGather(layout, tables, ids, layout.dtype);
  std::vector<uint8_t> got(want.size());
  const int64_t shape[] = {batch, length, layout.num_heads()};
  absl::Status s = client.Lookup(id, ids, shape, got);
  if (s.ok() && got != want) {
    return absl::DataLossError(absl::StrCat("layer ", id, ": rows differ"));
  }
  return s;
}

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_LOOKUP_CHECK_H_
