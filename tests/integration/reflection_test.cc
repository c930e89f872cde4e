// Server reflection is on, so grpcurl can list and describe the API.
#include <gmock/gmock.h>
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "reflection_client.grpc.pb.h"
#include "tests/testing/engramd_process.h"

namespace engram {
namespace {

namespace refl = grpc::reflection::v1alpha;

TEST(ReflectionTest, ListsAndDescribesTheEngramService) {
  auto server = testing::EngramdProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = refl::ServerReflection::NewStub(grpc::CreateChannel(
      (*server)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->ServerReflectionInfo(&context);

  refl::ServerReflectionRequest list;
  list.set_list_services("");
  ASSERT_TRUE(stream->Write(list));
  refl::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> names;
  for (const auto& s : response.list_services_response().service()) {
    names.push_back(s.name());
  }
  EXPECT_THAT(names, ::testing::IsSupersetOf(
                         {"engram.v1.EngramStore", "grpc.health.v1.Health"}));

  refl::ServerReflectionRequest describe;
  describe.set_file_containing_symbol("engram.v1.EngramStore");
  ASSERT_TRUE(stream->Write(describe));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_GT(response.file_descriptor_response().file_descriptor_proto_size(),
            0);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(
      response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.package(), "engram.v1");
  std::vector<std::string> methods;
  for (const auto& m : file.service(0).method()) methods.push_back(m.name());
  EXPECT_THAT(methods, ::testing::UnorderedElementsAre(
                           "Populate", "Lookup", "Remove", "DescribeLayer",
                           "ListLayers", "Load", "LookupMany", "ServerInfo",
                           "LookupTokens", "Status"));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace engram
