// A test driver that runs a plugin of libmaskrt_plugins.so through its IPluginV3 interface the way TensorRT does,
// without TensorRT: the GPU machines here have no TensorRT, and this keeps the glue between TensorRT and our kernels
// tested (libmaskrt_driver.so, called from Python: maskrt.plugins.driver).
//
// Lifecycle, in TensorRT's order: getCreators -> the creator of NAME/version/namespace -> createPlugin(fields, BUILD)
// -> core/build/runtime capabilities -> getNbOutputs, getOutputDataTypes, supportsFormatCombination for every
// position, configurePlugin, getWorkspaceSize -> getFieldsToSerialize -> createPlugin(serialized fields, RUNTIME)
// -> attachToContext -> onShapeChange -> enqueue. Without device pointers it stops before enqueue (the CPU check).
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/macros.h"

namespace
{
using namespace nvinfer1;

/// Fields from "name=i:1,2;name=f:0.5;name=s:text" (i = int32, f = float32, s = string).
struct Fields
{
    std::vector<std::string> names;
    std::vector<std::vector<int32_t>> ints;
    std::vector<std::vector<float>> floats;
    std::vector<std::string> strings;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};

    std::string parse(std::string const& text)
    {
        std::stringstream items(text);
        std::string item;
        std::vector<char> kinds;
        while (std::getline(items, item, ';'))
        {
            if (item.empty())
                continue;
            auto eq = item.find('=');
            if (eq == std::string::npos || item.size() < eq + 3 || item[eq + 2] != ':')
                return "bad field '" + item + "' (expected name=i|f|s:values)";
            names.push_back(item.substr(0, eq));
            char kind = item[eq + 1];
            std::string values = item.substr(eq + 3);
            kinds.push_back(kind);
            ints.emplace_back();
            floats.emplace_back();
            strings.emplace_back();
            if (kind == 's')
            {
                strings.back() = values;
                continue;
            }
            std::stringstream parts(values);
            std::string part;
            while (std::getline(parts, part, ','))
            {
                if (kind == 'i')
                    ints.back().push_back(static_cast<int32_t>(std::strtol(part.c_str(), nullptr, 10)));
                else if (kind == 'f')
                    floats.back().push_back(std::strtof(part.c_str(), nullptr));
                else
                    return "bad field kind '" + std::string(1, kind) + "' in '" + item + "'";
            }
        }
        for (size_t i = 0; i < names.size(); ++i)  // the vectors no longer move: point into them
        {
            if (kinds[i] == 'i')
                fields.emplace_back(names[i].c_str(), ints[i].data(), PluginFieldType::kINT32,
                    static_cast<int32_t>(ints[i].size()));
            else if (kinds[i] == 'f')
                fields.emplace_back(names[i].c_str(), floats[i].data(), PluginFieldType::kFLOAT32,
                    static_cast<int32_t>(floats[i].size()));
            else
                fields.emplace_back(names[i].c_str(), strings[i].c_str(), PluginFieldType::kCHAR,
                    static_cast<int32_t>(strings[i].size() + 1));
        }
        collection.nbFields = static_cast<int32_t>(fields.size());
        collection.fields = fields.data();
        return "";
    }
};

PluginTensorDesc describe(int32_t nbDims, int64_t const* dims, int32_t type)
{
    PluginTensorDesc desc{};
    desc.dims.nbDims = nbDims;
    for (int32_t d = 0; d < nbDims; ++d)
        desc.dims.d[d] = dims[d];
    desc.type = static_cast<DataType>(type);
    desc.format = TensorFormat::kLINEAR;
    desc.scale = 1.0F;
    return desc;
}

struct Deleter
{
    void operator()(IPluginV3* p) const
    {
        delete p;
    }
};

} // namespace

/// Runs plugin `name` (version "1", namespace "maskrt") of `library` with `fields` on the described tensors.
/// dims: all inputs' then all outputs' dims, `ranks[i]` each; types: DataType values. With `execute` and non-null
/// pointers it calls enqueue on `stream`; `workspace` must then hold `*workspaceSize` bytes (ask first with execute
/// 0). `steps` receives the lifecycle steps done, `err` the first failure. Returns 0 on success.
MASKRT_EXPORT int maskrt_drive_plugin(char const* library, char const* name, char const* fieldText, int32_t nbInputs,
    int32_t nbOutputs, int32_t const* ranks, int64_t const* dims, int32_t const* types, void const* const* inputs,
    void* const* outputs, void* workspace, int64_t* workspaceSize, int execute, void* stream, char* steps,
    int stepsLen, char* err, int errLen)
{
    std::string done;
    auto fail = [&](std::string const& why) {
        std::snprintf(err, static_cast<size_t>(errLen), "%s", why.c_str());
        std::snprintf(steps, static_cast<size_t>(stepsLen), "%s", done.c_str());
        return 1;
    };
    auto step = [&](std::string const& s) { done += (done.empty() ? "" : ";") + s; };

    void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!handle)
        return fail(std::string("dlopen: ") + dlerror());
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    if (!getCreators || !dlsym(handle, "setLoggerFinder"))
        return fail("the library does not export getCreators and setLoggerFinder");
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    step("creators=" + std::to_string(nbCreators));
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
            continue;
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0
            && std::strcmp(c->getPluginNamespace(), "maskrt") == 0)
            creator = c;
    }
    if (!creator)
        return fail(std::string("no IPluginCreatorV3One named ") + name + " (version 1, namespace maskrt)");
    step("creator");

    Fields fields;
    std::string why = fields.parse(fieldText);
    if (!why.empty())
        return fail(why);
    std::unique_ptr<IPluginV3, Deleter> plugin(creator->createPlugin(name, &fields.collection, TensorRTPhase::kBUILD));
    if (!plugin)
        return fail("createPlugin(BUILD) refused the fields");
    step("create");
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    if (!core || !build || !plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
        return fail("a capability interface is missing");
    if (std::strcmp(core->getPluginName(), name) != 0 || std::strcmp(core->getPluginNamespace(), "maskrt") != 0)
        return fail("the plugin reports another identity than its creator");
    step("capabilities");

    if (build->getNbOutputs() != nbOutputs)
        return fail("getNbOutputs is " + std::to_string(build->getNbOutputs()) + ", expected "
            + std::to_string(nbOutputs));
    std::vector<PluginTensorDesc> desc;
    int64_t const* d = dims;
    for (int32_t i = 0; i < nbInputs + nbOutputs; ++i)
    {
        desc.push_back(describe(ranks[i], d, types[i]));
        d += ranks[i];
    }
    std::vector<DataType> inTypes, outTypes(static_cast<size_t>(nbOutputs));
    for (int32_t i = 0; i < nbInputs; ++i)
        inTypes.push_back(desc[static_cast<size_t>(i)].type);
    if (build->getOutputDataTypes(outTypes.data(), nbOutputs, inTypes.data(), nbInputs) != 0)
        return fail("getOutputDataTypes failed");
    for (int32_t i = 0; i < nbOutputs; ++i)
        if (outTypes[static_cast<size_t>(i)] != desc[static_cast<size_t>(nbInputs + i)].type)
            return fail("output " + std::to_string(i) + " has another type than getOutputDataTypes says");
    step("types");
    std::vector<DynamicPluginTensorDesc> dyn(desc.size());
    for (size_t i = 0; i < desc.size(); ++i)
    {
        dyn[i].desc = desc[i];
        dyn[i].min = desc[i].dims;
        dyn[i].opt = desc[i].dims;
        dyn[i].max = desc[i].dims;
    }
    for (int32_t pos = 0; pos < nbInputs + nbOutputs; ++pos)
        if (!build->supportsFormatCombination(pos, dyn.data(), nbInputs, nbOutputs))
            return fail("supportsFormatCombination refuses position " + std::to_string(pos));
    step("formats");
    if (build->configurePlugin(dyn.data(), nbInputs, dyn.data() + nbInputs, nbOutputs) != 0)
        return fail("configurePlugin failed");
    step("configure");
    *workspaceSize = static_cast<int64_t>(build->getWorkspaceSize(dyn.data(), nbInputs, dyn.data() + nbInputs,
        nbOutputs));
    step("workspace=" + std::to_string(*workspaceSize));

    // what an engine stores, and the runtime-phase plugin TensorRT makes from it
    auto* runtimeCap = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serialized = runtimeCap->getFieldsToSerialize();
    if (!serialized)
        return fail("getFieldsToSerialize returned nothing");
    step("serialize=" + std::to_string(serialized->nbFields));
    std::unique_ptr<IPluginV3, Deleter> loaded(creator->createPlugin(name, serialized, TensorRTPhase::kRUNTIME));
    if (!loaded)
        return fail("createPlugin(RUNTIME) refused the serialized fields");
    auto* loadedRuntime = static_cast<IPluginV3OneRuntime*>(loaded->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::unique_ptr<IPluginV3, Deleter> attached(loadedRuntime->attachToContext(nullptr));
    if (!attached)
        return fail("attachToContext returned nothing");
    step("attach");
    auto* runtime = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (runtime->onShapeChange(desc.data(), nbInputs, desc.data() + nbInputs, nbOutputs) != 0)
        return fail("onShapeChange failed");
    step("shape");
    if (!execute)
    {
        std::snprintf(steps, static_cast<size_t>(stepsLen), "%s", done.c_str());
        return 0;
    }
    if (*workspaceSize > 0 && !workspace)
        return fail("enqueue needs a workspace of " + std::to_string(*workspaceSize) + " bytes");
    int32_t status = runtime->enqueue(desc.data(), desc.data() + nbInputs, inputs, outputs, workspace,
        static_cast<cudaStream_t>(stream));
    if (status != 0)
        return fail("enqueue returned " + std::to_string(status));
    step("enqueue");
    std::snprintf(steps, static_cast<size_t>(stepsLen), "%s", done.c_str());
    return 0;
}
