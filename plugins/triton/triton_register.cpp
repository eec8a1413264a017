// libmaskrt_triton.so: makes libmaskrt_plugins.so usable where a plugin library is only dlopen()ed - Triton's
// `--backend-config=tensorrt,plugins=PATH`, or LD_PRELOAD - so that nothing asks it for getCreators.
//
// When this library is loaded into a process that already holds full TensorRT (libnvinfer), its constructor loads
// libmaskrt_plugins.so from its own folder and registers each plugin creator that the registry does not hold yet.
// Anywhere else it does nothing but say why on stderr: before libnvinfer is loaded there is no registry to use, and
// another registry (TensorRT-RTX's) has another vtable, so the plugin library itself never calls a registry.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "common/macros.h"

namespace
{

using GetRegistry = nvinfer1::IPluginRegistry* (*) () noexcept;
using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);

// A plain buffer, not a std::string: the constructor below may run before the library's dynamic initializers.
char gStatus[1024] = "not run";

void setStatus(std::string const& message)
{
    std::snprintf(gStatus, sizeof(gStatus), "%s", message.c_str());
}

void note(std::string const& message)
{
    setStatus(message);
    std::fprintf(stderr, "maskrt triton: %s\n", message.c_str());
}

std::string ownFolder()
{
    Dl_info self{};
    if (dladdr(reinterpret_cast<void*>(&ownFolder), &self) == 0 || self.dli_fname == nullptr)
        return ".";
    std::string path(self.dli_fname);
    auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

__attribute__((constructor)) void registerWithTensorRT()
{
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    Dl_info owner{};
    if (symbol == nullptr || dladdr(symbol, &owner) == 0 || owner.dli_fname == nullptr)
    {
        note("no TensorRT in this process yet: nothing registered (load this library after libnvinfer, as Triton's "
             "tensorrt backend does)");
        return;
    }
    if (std::strstr(owner.dli_fname, "libnvinfer") == nullptr)
    {
        note(std::string("getPluginRegistry comes from ") + owner.dli_fname
            + ", not TensorRT's libnvinfer: nothing registered (use IPluginRegistry::loadLibrary on "
              "libmaskrt_plugins.so there)");
        return;
    }
    std::string const library = ownFolder() + "/libmaskrt_plugins.so";
    void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    auto getCreators = handle ? reinterpret_cast<GetCreators>(dlsym(handle, "getCreators")) : nullptr;
    if (getCreators == nullptr)
    {
        note("cannot load " + library + (handle ? ": no getCreators" : std::string(": ") + dlerror()));
        return;
    }
    nvinfer1::IPluginRegistry* registry = reinterpret_cast<GetRegistry>(symbol)();
    if (registry == nullptr)
    {
        note("TensorRT returned no plugin registry");
        return;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    std::string done;
    for (int32_t i = 0; i < count; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
            continue;
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        char const* ns = creator->getPluginNamespace();
        std::string const id = std::string(ns) + "::" + creator->getPluginName() + "/" + creator->getPluginVersion();
        if (registry->getCreator(creator->getPluginName(), creator->getPluginVersion(), ns) != nullptr)
            done += (done.empty() ? "" : ", ") + id + " (already registered)";
        else if (registry->registerCreator(*creators[i], ns))
            done += (done.empty() ? "" : ", ") + id;
        else
        {
            note("TensorRT refused to register " + id);
            return;
        }
    }
    setStatus("registered " + done);  // silent on success: Triton's log shows the plugins at engine load
}

} // namespace

/// What the constructor did ("registered maskrt::MultiLevelRoIAlign/1, ..." or why it did nothing): for tests.
MASKRT_EXPORT char const* maskrt_triton_status()
{
    return gStatus;
}
