// The C++ layer in one program: list the models, then stream a generation
// from the first of them (or the one named by MAAS_MODEL) and print its
// details. Configured from the environment, as the C examples are:
//
//   MAAS_CLIENT_ID=... MAAS_CLIENT_SECRET=... MAAS_CLOUD_ACCOUNT=...
//   maas-cpp-example "Tell me a joke"
//
// SPDX-License-Identifier: MIT
#include <cstdlib>
#include <iostream>

#include <maas/maas.hpp>

int main(int argc, char **argv)
{
    try {
        maas::Client client; // MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, ...

        maas::ModelList models = client.models();
        for (maas::Model m : models)
            std::cerr << "model: " << m.name() << " (" << m.product_name() << ")\n";
        const char *wanted = std::getenv("MAAS_MODEL");
        std::optional<maas::Model> model = wanted ? models.find(wanted) : models.at(0);
        if (!model) {
            std::cerr << "no model named " << wanted << "\n";
            return 1;
        }

        maas::Request request;
        request.model_info = *model;
        request.prompt = argc > 1 ? argv[1] : "Tell me a joke";
        request.max_new_tokens = 40;

        // Output is flushed once per network read (last_buffered), not once per
        // token; returning false from the callback would stop the stream.
        maas::Details details = client.generate(request, [](const maas::Token &t) {
            if (!t.special)
                std::cout << t.text;
            if (t.last_buffered)
                std::cout.flush();
        });
        std::cout << "\n";
        std::cerr << details.finish_reason_name << ", " << details.generated_tokens
                  << " tokens, request " << details.request_id << "\n";
        return 0;
    } catch (const maas::Error &e) {
        std::cerr << "maas-cpp-example: " << e.what() << " (" << e.status_name();
        if (e.http_status())
            std::cerr << ", HTTP " << e.http_status();
        if (!e.request_id().empty())
            std::cerr << ", request " << e.request_id();
        std::cerr << ")\n";
        return 1;
    }
}
